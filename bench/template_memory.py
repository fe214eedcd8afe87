"""Memory of template clones against cold guests (issue 12): PSS per guest.

Three variants, N guests each (default 8), all running `sleep 3600` with the default
image, the agent on virtio-serial, no `--net`:

  cold        N x `kindling create`
  clone       N x `kindling create --template T` (T: a default template, shared memory:
              its RAM is a file every clone maps copy-on-write)
  clone-private  N x `kindling create --template P` (P: `template create --private-memory`:
              its RAM restored into each clone's own anonymous memory)

A variant's N guests are created at once and all waited for until Running; then the
PSS of each guest's QEMU process (/proc/PID/smaps_rollup, the guest's RAM and QEMU's
own) is read while all N run side by side -- PSS divides a shared page between the
processes that map it, so sharing between siblings shows -- and the N are deleted
before the next variant.  Prints the median PSS per guest, the variants' sum, and the
ratios clone/cold and clone-private/cold.  The templates' builds are not counted.

    .venv/bin/python bench/template_memory.py [--guests 8] [--json FILE]
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.shim import SLEEPER, Shim  # noqa: E402

VARIANTS = {"cold": [], "clone": ["--template", "t"], "clone-private": ["--template", "p"]}
WAIT_TIMEOUT = 1800


def pss_kib(pid):
    """The Pss line of /proc/PID/smaps_rollup, in KiB."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/smaps_rollup has no Pss line")


def measure(shim, variant, guests):
    names = [f"{variant}-{i}" for i in range(guests)]
    creates = [shim.popen("create", "--name", n, *VARIANTS[variant], "--", *SLEEPER) for n in names]
    for p in creates:
        shim.collect(p)
    waits = [shim.popen("wait", n, "--for", "running") for n in names]
    for p in waits:
        shim.collect(p, timeout=WAIT_TIMEOUT)
    pss = [pss_kib(shim.inspect(n)["pid"]) / 1024 for n in names]
    for p in [shim.popen("delete", n) for n in names]:
        shim.collect(p)
    shim.created.clear()
    return pss


def run(guests):
    with Shim("kb-tm-") as shim:
        shim.run("template", "create", "t")
        shim.run("template", "create", "p", "--private-memory")
        return {v: measure(shim, v, guests) for v in VARIANTS}


def report(res):
    med = {v: statistics.median(p) for v, p in res.items()}
    print(f"\ntemplate memory: {len(res['cold'])} guests a variant side by side, PSS of each QEMU (MiB)")
    for v, p in res.items():
        print(f"  {v:10} median {med[v]:7.1f}  min {min(p):7.1f}  max {max(p):7.1f}  sum {sum(p):8.1f}")
    for v in ("clone", "clone-private"):
        print(f"  {v}/cold   {med[v] / med['cold']:.2f}x per guest")
    return {"pss_mib": res, "median_mib": med,
            "ratios": {v: med[v] / med["cold"] for v in ("clone", "clone-private")}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guests", type=int, default=8, help="guests a variant, created at once (default 8)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    if args.guests < 1:
        ap.error("--guests must be at least 1")
    out = report(run(args.guests))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
