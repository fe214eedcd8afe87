"""standby and restore against a cold boot (issue 11's benchmark).

Each iteration boots one fresh instance of the default image (exec mode, the agent on
virtio-serial, program `sleep 3600`) and measures, through the Python API in this one
process (no CLI start-up in any figure):

  cold       create -> wait Running (the host saw PROGRAM-START and AGENT-READY)
  used       the guest's memory in use just before the standby: 512 MiB - MemFree
  standby    `standby` (pause, save the VM state to the snapshot, end QEMU)
  snapshot   the snapshot file's size (zero pages are not written out)
  restore    `restore` -> the agent answered `exec true` (a new QEMU, the snapshot loaded,
             cont, the guest's clock and RNG refreshed, a new agent connection)

then deletes it.  Prints median/min/max of each and the ratio restore / cold (target:
under 0.5).  One warm-up boot first fills the build and page caches (not counted; skipped
with --iterations 1).

    .venv/bin/python bench/standby.py [--iterations 5] [--json FILE]

`--iterations 1` is the CI smoke run (make bench-smoke).
"""

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from host_shim import Kindling  # noqa: E402

from tests.vm import qemu_pids_using  # noqa: E402

MEMORY_MIB = 512
BOOT_TIMEOUT = 600
TARGET = 0.5               # restore / cold
MIB = 1 << 20


def used_memory(k: Kindling, name: str) -> int:
    meminfo = k.exec(name, ["cat", "/proc/meminfo"]).stdout.decode()
    free_kib = int(re.search(r"^MemFree:\s+(\d+) kB", meminfo, re.M).group(1))
    return MEMORY_MIB * MIB - free_kib * 1024


def one(k: Kindling, name: str, measure: bool = True) -> dict:
    t0 = time.monotonic()
    k.create(["sleep", "3600"], name=name, accel="tcg", memory=MEMORY_MIB)
    k.wait(name, "running", timeout=BOOT_TIMEOUT)
    cold = time.monotonic() - t0
    try:
        if not measure:
            return {}
        used = used_memory(k, name)
        t0 = time.monotonic()
        info = k.standby(name)
        standby = time.monotonic() - t0
        size = (info.dir / "snapshot" / "vmstate").stat().st_size
        t0 = time.monotonic()
        k.restore(name)
        result = k.exec(name, ["true"])
        restore = time.monotonic() - t0
        if result.code != 0:
            raise SystemExit(f"exec true after the restore exited {result.code}")
        return {"cold": cold, "standby": standby, "restore": restore,
                "snapshot_mib": size / MIB, "used_mib": used / MIB}
    finally:
        k.delete(name)


def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def report(runs: list[dict]) -> dict:
    out = {key: stats([r[key] for r in runs]) for key in runs[0]}
    out["ratio_restore_cold"] = out["restore"]["median"] / out["cold"]["median"]
    out["runs"] = runs
    for key, unit in (("cold", "s"), ("standby", "s"), ("restore", "s"),
                      ("used_mib", "MiB"), ("snapshot_mib", "MiB")):
        s = out[key]
        print(f"{key:13} median {s['median']:8.2f} {unit:3}  min {s['min']:8.2f}  "
              f"max {s['max']:8.2f}")
    verdict = "meets" if out["ratio_restore_cold"] < TARGET else "misses"
    print(f"restore -> exec true / cold create -> Running: {out['ratio_restore_cold']:.2f} "
          f"({verdict} the target < {TARGET})")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    if args.iterations < 1:
        parser.error("--iterations must be at least 1")
    home = Path(tempfile.mkdtemp(prefix="kbstb"))     # short: sun_path
    k = Kindling(home)
    try:
        if args.iterations > 1:
            one(k, "warm", measure=False)
        runs = []
        for i in range(args.iterations):
            runs.append(one(k, f"s{i}"))
            print(f"run {i + 1}: " + ", ".join(f"{key} {v:.2f}" for key, v in runs[-1].items()),
                  flush=True)
        out = report(runs)
    finally:
        leftover = qemu_pids_using(home)
        shutil.rmtree(home, ignore_errors=True)
    if leftover:
        raise SystemExit(f"QEMU processes left behind: {leftover}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
