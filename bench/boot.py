"""Boot benchmark (issue 2): N boots of `kindling run -- true` under TCG.

Prints, as medians over the runs (min..max beside them):
  kernel start -> PID 1        guest clock: the `kernel` stage (up to the exec of /init)
  PID 1 -> PROGRAM-START       guest clock: exec of /init -> end of the `program-start` stage
  host wall create -> exit     the whole `kindling run` command, measured on the host
and the median of every PID 1 stage, plus the initrd size.  The machine is
shared and noisy: compare medians, and ratios measured in the same run.

    .venv/bin/python bench/boot.py [--runs 5] [--json FILE] [--cpus N] [--agent serial|none]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from image_build.run import run  # noqa: E402
from initsys import protocol  # noqa: E402


def stages_of(app_log):
    """The KINDLING-STAGE lines of a boot: on the control channel (logs/control.log, next to
    the console's app.log), or on the console when booted with kindling_timeline=1."""
    stages = {}
    control_log = app_log.with_name("control.log")
    text = app_log.read_text(errors="replace")
    if control_log.exists():
        text += "\n" + control_log.read_text(errors="replace")
    for line in text.splitlines():
        m = protocol.parse_line(line)
        if m is not None and m.kind == protocol.STAGE:
            stages[m.fields["name"]] = (float(m.fields["start"]), float(m.fields["end"]))
    return stages


def one_boot(home, extra):
    env = dict(os.environ, KINDLING_HOME=str(home), KINDLING_ACCEL="tcg")
    t = time.monotonic()
    r = run([sys.executable, "-m", "host_shim.cli", "run", "--keep", *extra, "--", "true"],
            cwd=ROOT, env=env, check=False, timeout=300)
    wall = time.monotonic() - t
    if r.returncode != 0:
        raise SystemExit(f"boot failed ({r.returncode}):\n{r.stderr[-2000:]}")
    logs = sorted(home.glob("instances/*/logs/app.log"), key=lambda p: p.stat().st_mtime)
    stages = stages_of(logs[-1])
    return wall, stages


def boot_measures(stages):
    """(kernel start -> PID 1, PID 1 -> PROGRAM-START), guest clock, from one boot's stages."""
    init_start = stages["python"][0] if "python" in stages else stages["kernel"][1]
    return stages["kernel"][1], stages["program-start"][1] - init_start


def summary(values):
    return statistics.median(values), min(values), max(values)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--cpus", type=int)
    ap.add_argument("--agent", choices=("serial", "none"), default="serial",
                    help="none: no agent, so PROGRAM-START waits for no readiness gate")
    args = ap.parse_args(argv)
    extra = (["--cpus", str(args.cpus)] if args.cpus else []) + ["--agent", args.agent]

    from image_build.build import BuildOptions, build_all
    with tempfile.TemporaryDirectory(prefix="kindling-bench-") as tmp:
        art = build_all(BuildOptions(out_dir=Path(tmp) / "out"))
        initrd_size = art.initrd.stat().st_size
        raw = art.info.get("initrd", {}).get("uncompressed_size")
        one_boot(Path(tmp) / "warm", extra)  # warm the page cache; not counted
        walls, kernel, pid1, per_stage = [], [], [], {}
        for i in range(args.runs):
            wall, stages = one_boot(Path(tmp) / f"run{i}", extra)
            walls.append(wall)
            k, p = boot_measures(stages)
            kernel.append(k)
            pid1.append(p)
            for name, (start, end) in stages.items():
                per_stage.setdefault(name, []).append(end - start)
            print(f"run {i + 1}/{args.runs}: wall {wall:.2f} s, kernel {kernel[-1]:.3f} s, "
                  f"PID 1 -> PROGRAM-START {pid1[-1]:.3f} s", file=sys.stderr)

    rows = [("kernel start -> PID 1 (guest)", summary(kernel)),
            ("PID 1 -> PROGRAM-START (guest)", summary(pid1)),
            ("host wall create -> exit", summary(walls))]
    print(f"\nboot benchmark: medians over {args.runs} runs, TCG, `kindling run --agent {args.agent} -- true`")
    print(f"{'measure':34} {'median':>8} {'min':>8} {'max':>8}")
    for name, (med, lo, hi) in rows:
        print(f"{name:34} {med:8.3f} {lo:8.3f} {hi:8.3f}")
    print("\nPID 1 stages (median duration, s):")
    for name, values in per_stage.items():
        print(f"  {name:16} {statistics.median(values):7.3f}")
    print(f"\ninitrd: {initrd_size / 2**20:.1f} MiB compressed"
          + (f", {raw / 2**20:.1f} MiB uncompressed" if raw else ""))
    if args.json:
        args.json.write_text(json.dumps({
            "runs": args.runs, "kernel_s": kernel, "pid1_to_program_start_s": pid1, "wall_s": walls,
            "stages_median_s": {k: statistics.median(v) for k, v in per_stage.items()},
            "initrd_bytes": initrd_size, "initrd_uncompressed_bytes": raw}, indent=2))


if __name__ == "__main__":
    main()
