"""Stage benchmark (issue 3): the `concurrent` vs the `sequential` boot strategy.

Boots `kindling run --net --volume a:/data --volume b:/ro:ro -- true` under TCG,
alternating the strategies (c, s, c, s, ...) in one run with one build, so the
noise of a shared machine hits both alike.  Reports, as medians per strategy:
  PID 1 -> PROGRAM-START   guest clock: end of `kernel` (exec of /init) -> end of `program-start`
  network, volumes         guest clock: the two stages' durations
  host wall                the whole `kindling run` command, measured on the host
and the ratio sequential/concurrent of each.  The volumes are two fresh 16M
ext4 images in a temporary KINDLING_HOME (a rw, b ro).

    .venv/bin/python bench/stages.py [--runs 5] [--agent serial|none] [--json FILE]
"""

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from boot import stages_of  # noqa: E402  (bench/boot.py: this script's folder is on sys.path)
from image_build.run import run  # noqa: E402

STRATEGIES = ("concurrent", "sequential")
MEASURES = (("pid1", "PID 1 -> PROGRAM-START (guest)"), ("network", "network stage (guest)"),
            ("volumes", "volumes stage (guest)"), ("wall", "host wall create -> exit"))


def kindling(home, *argv, timeout):
    env = dict(os.environ, KINDLING_HOME=str(home), KINDLING_ACCEL="tcg")
    r = run([sys.executable, "-m", "host_shim.cli", *argv], cwd=ROOT, env=env, check=False,
            timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"kindling {argv[0]} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return r


def one_boot(home, name, strategy, agent, timeout=300):
    argv = ["run", "--accel", "tcg", "--keep", "--name", name, "--agent", agent, "--net",
            "--volume", "a:/data", "--volume", "b:/ro:ro"]
    if strategy == "sequential":
        argv += ["--kernel-arg", "kindling_strategy=sequential"]
    before = set((home / "instances").glob("*"))
    t = time.monotonic()
    kindling(home, *argv, "--", "true", timeout=timeout)
    wall = time.monotonic() - t
    (instance,) = set((home / "instances").glob("*")) - before
    stages = stages_of(instance / "logs" / "app.log")
    kindling(home, "rm", name, timeout=60)  # a kept --net instance keeps its namespace
    net, vol = stages["network"], stages["volumes"]
    return {"pid1": stages["program-start"][1] - stages["kernel"][1], "wall": wall,
            "network": net[1] - net[0], "volumes": vol[1] - vol[0],
            "overlap": net[0] < vol[1] and vol[0] < net[1]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--agent", choices=("serial", "none"), default="serial")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    results = {s: [] for s in STRATEGIES}
    with tempfile.TemporaryDirectory(prefix="kindling-bench-stages-") as tmp:
        home = Path(tmp) / "home"
        try:
            for vol in ("a", "b"):
                kindling(home, "volume", "create", vol, "--size", "16M", timeout=60)
            # builds the images if needed and warms the page cache; not counted
            one_boot(home, "warm", "concurrent", args.agent, timeout=1800)
            for i in range(args.runs):
                for s in STRATEGIES:
                    r = one_boot(home, f"{s[0]}{i}", s, args.agent)
                    results[s].append(r)
                    print(f"run {i + 1}/{args.runs} {s:10}: PID 1 -> PROGRAM-START {r['pid1']:.3f} s, "
                          f"network {r['network']:.3f} s, volumes {r['volumes']:.3f} s, "
                          f"wall {r['wall']:.2f} s", file=sys.stderr)
        finally:  # leave no VM or namespace behind, even after a failure
            for meta in (home / "instances").glob("*/metadata.json"):
                run([sys.executable, "-m", "host_shim.cli", "rm", meta.parent.name], cwd=ROOT,
                    env={"KINDLING_HOME": str(home)}, check=False, timeout=60)

    if not all(r["overlap"] for r in results["concurrent"]) or any(r["overlap"] for r in results["sequential"]):
        print("warning: the stages did not overlap as the strategies say they should", file=sys.stderr)
    med = {s: {k: statistics.median(r[k] for r in results[s]) for k, _ in MEASURES} for s in STRATEGIES}
    print(f"\nstage benchmark: medians over {args.runs} runs per strategy, interleaved, TCG, "
          f"--agent {args.agent}, --net + 2 volumes (rw, ro)")
    print(f"{'measure (s)':32} {'concurrent':>10} {'sequential':>10} {'seq/conc':>9}")
    for key, label in MEASURES:
        c, s = med["concurrent"][key], med["sequential"][key]
        print(f"{label:32} {c:10.3f} {s:10.3f} {s / c:8.2f}x")
    argv_shown = ["bench/stages.py", "--runs", str(args.runs), "--agent", args.agent]
    print(f"\nreproduce: {shlex.join([os.path.relpath(sys.executable, ROOT), *argv_shown])}")
    if args.json:
        args.json.write_text(json.dumps({
            "runs": args.runs, "agent": args.agent, "per_run": results, "median_s": med,
            "ratio_sequential_over_concurrent": {k: med["sequential"][k] / med["concurrent"][k]
                                                 for k, _ in MEASURES}}, indent=2))


if __name__ == "__main__":
    main()
