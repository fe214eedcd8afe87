"""Scale benchmark (issue 7, benchmark 4): N instances created at once on the host.

Each run starts N `kindling create -- sleep 3600` at the same moment (default
image: busybox root, agent on virtio-serial), then one `kindling wait --for
running` per instance, and reports:

  all Running           wall time from the first create until every wait returned
  time to Running       each instance's own (inspect's time_to_running: its launch
                        -> the marker that made it Running), median/max over the N
  shim CPU per VM       user+sys of every kindling host process involved (create,
                        wait, inspect -- resource.getrusage(RUSAGE_CHILDREN) deltas),
                        divided by N.  It includes `create`'s image-cache check and
                        the Python start-up of each command.
  QEMU CPU per VM       user+sys of the instances' QEMU processes (/proc/<pid>/stat)
                        when all are Running: not the shim's, shown for context

Medians over --runs.  Every instance is deleted at the end, also on failure.

    .venv/bin/python bench/scale.py [--vms 8] [--runs 1] [--json FILE]
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.shim import SLEEPER, Shim, children_cpu_s, proc_cpu_s  # noqa: E402

WAIT_TIMEOUT = 900


def one_run(n, run):
    with Shim("kb-sc-") as shim:
        names = [f"s{run}v{i}" for i in range(n)]
        cpu0 = children_cpu_s()
        t0 = time.monotonic()
        creates = [shim.popen("create", "--json", "--name", name, "--", *SLEEPER) for name in names]
        created_at = {}
        for name, p in zip(names, creates):
            shim.collect(p)
            created_at[name] = time.monotonic() - t0
        waits = {name: shim.popen("wait", name, "--for", "running", "--timeout", str(WAIT_TIMEOUT), "--json")
                 for name in names}
        running_at = {}
        for name, p in waits.items():
            state = json.loads(shim.collect(p, timeout=WAIT_TIMEOUT + 60))["state"]
            if state != "Running":
                raise RuntimeError(f"{name} is {state} after wait --for running")
            running_at[name] = time.monotonic() - t0
        all_running = time.monotonic() - t0
        infos = {name: shim.inspect(name) for name in names}
        shim_cpu = children_cpu_s() - cpu0
        qemu_cpu = [proc_cpu_s(info["pid"]) for info in infos.values()]
        if None in qemu_cpu:
            raise RuntimeError("a QEMU process was gone before its CPU time could be read")
        return {
            "vms": n,
            "all_running_s": all_running,
            "time_to_running_s": {name: infos[name]["time_to_running"] for name in names},
            "create_returned_s": created_at,
            "wait_returned_s": running_at,
            "shim_cpu_s": shim_cpu,
            "shim_cpu_per_vm_s": shim_cpu / n,
            "qemu_cpu_s": dict(zip(names, qemu_cpu)),
            "qemu_cpu_per_vm_s": statistics.mean(qemu_cpu),
        }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vms", type=int, default=8, help="instances created at once (default 8)")
    ap.add_argument("--runs", type=int, default=1, help="repetitions; medians are reported (default 1)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    if args.vms < 1 or args.runs < 1:
        ap.error("--vms and --runs must be at least 1")

    from image_build.build import BuildOptions, build_all
    with tempfile.TemporaryDirectory(prefix="kindling-sc-") as tmp:
        build_all(BuildOptions(out_dir=Path(tmp) / "out"))  # cached images: not part of the timing

    runs = []
    for r in range(args.runs):
        res = one_run(args.vms, r)
        runs.append(res)
        ttr = list(res["time_to_running_s"].values())
        print(f"run {r + 1}/{args.runs}: all {args.vms} Running after {res['all_running_s']:.2f} s;"
              f" time to Running median {statistics.median(ttr):.2f} s, max {max(ttr):.2f} s;"
              f" shim CPU {res['shim_cpu_per_vm_s']:.2f} s/VM", file=sys.stderr)

    med = lambda f: statistics.median(f(r) for r in runs)  # noqa: E731
    rows = [
        ("first create -> all Running (wall)", med(lambda r: r["all_running_s"])),
        ("time to Running, median instance", med(lambda r: statistics.median(r["time_to_running_s"].values()))),
        ("time to Running, slowest instance", med(lambda r: max(r["time_to_running_s"].values()))),
        ("last `create` returned", med(lambda r: max(r["create_returned_s"].values()))),
        ("shim CPU (user+sys), all commands", med(lambda r: r["shim_cpu_s"])),
        ("shim CPU per VM", med(lambda r: r["shim_cpu_per_vm_s"])),
        ("QEMU CPU per VM until all Running", med(lambda r: r["qemu_cpu_per_vm_s"])),
    ]
    print(f"\nscale benchmark: {args.vms} VMs created at once, TCG, `kindling create -- sleep 3600`,"
          f" median over {args.runs} run(s)")
    for label, value in rows:
        print(f"  {label:40} {value:8.2f} s")
    if runs:
        print("  time to Running per instance (last run): "
              + ", ".join(f"{v:.2f}" for v in runs[-1]["time_to_running_s"].values()))
    if args.json:
        args.json.write_text(json.dumps({"vms": args.vms, "runs": runs,
                                         "medians": {label: value for label, value in rows}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
