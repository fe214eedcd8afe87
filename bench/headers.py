"""Kernel-headers benchmark (issue 6): what shipping and installing the headers costs.

1. Compression (`--compressions gz,xz`): for each, the tarball's size and its
   install by the worker (initsys/headers.py) on the host, into a temporary
   root (median of 3), and in a TCG guest: a VM booted with an initrd made of
   that tarball's segment + the `--no-headers` initrd; first boot = the
   extraction (the worker's log line, and HEADERS-START -> READY on the guest
   clock), then stop + start = the fast path.
2. Boot cost (`--runs N`): `kindling run -- true` with and without
   `--no-headers`, interleaved (h, n, h, n, ...); medians of kernel start ->
   PID 1 and PID 1 -> PROGRAM-START (guest clock) and the host wall time, and
   the two initrd sizes.

    .venv/bin/python bench/headers.py [--runs 5] [--guest-runs 1] [--compressions gz,xz] [--json FILE]

--runs 0 skips the boot-cost part.
"""

import argparse
import json
import os
import re
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from boot import boot_measures, one_boot  # noqa: E402  (bench/boot.py, this script's folder)

from image_build.run import run  # noqa: E402
from initsys import protocol  # noqa: E402

GUEST_TIMEOUT = 900
INSTALLED = re.compile(r"installed (\d+) files for \S+ in ([\d.]+) s")


def kindling(home, *argv, timeout=300, check=True):
    env = dict(os.environ, KINDLING_HOME=str(home), KINDLING_ACCEL="tcg")
    r = run([sys.executable, "-m", "host_shim.cli", *argv], cwd=ROOT, env=env, check=False,
            timeout=timeout)
    if check and r.returncode != 0:
        raise SystemExit(f"kindling {argv[0]} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return r


# --- host ----------------------------------------------------------------------------

def host_install(tarball, release, runs=3):
    """Median seconds of the worker's extraction into a fresh temporary root, and the file count."""
    times, files = [], None
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="kindling-bench-hroot-", dir="/var/tmp") as root:
            r = run([sys.executable, "-m", "initsys.headers", "--root", root, "--tarball",
                     str(tarball), "--release", release], cwd=ROOT, check=False, timeout=600)
            m = INSTALLED.search(Path(root, "run/kindling/kernel-headers.log").read_text())
            if r.returncode != 0 or m is None:
                raise SystemExit(f"the worker failed on the host:\n{r.stdout}{r.stderr}")
            files, seconds = int(m.group(1)), float(m.group(2))
            times.append(seconds)
    return statistics.median(times), files


def host_decompress(tarball, runs=3):
    """Median seconds to read every member's data (decompression + tar parsing, no writes)."""
    times = []
    for _ in range(runs):
        t = time.monotonic()
        with tarfile.open(tarball, "r|*") as tar:
            for m in tar:
                if m.isreg():
                    tar.extractfile(m).read()
        times.append(time.monotonic() - t)
    return statistics.median(times)


# --- guest ---------------------------------------------------------------------------

def wait_status(home, name):
    deadline = time.monotonic() + GUEST_TIMEOUT
    while time.monotonic() < deadline:
        r = kindling(home, "exec", name, "--", "cat", "/run/kindling/kernel-headers.status", check=False)
        if r.stdout.strip() in ("ready", "failed"):
            return r.stdout.strip()
        time.sleep(1)
    raise SystemExit(f"{name}: the headers worker did not finish within {GUEST_TIMEOUT} s")


def boot_result(home, name):
    """The worker's log and HEADERS-START -> READY (guest clock) of the current boot."""
    if wait_status(home, name) != "ready":
        raise SystemExit(f"{name}: the headers worker failed: {kindling(home, 'logs', name).stdout[-500:]}")
    log = kindling(home, "exec", name, "--", "cat", "/run/kindling/kernel-headers.log").stdout
    kindling(home, "analyze", name)  # a full scan records the markers that came after Running
    markers = json.loads(kindling(home, "inspect", name, "--json").stdout)["markers"]
    ts = {k: protocol.parse_ts(v["ts"]) for k, v in markers.items()}
    m = INSTALLED.search(log)
    return {"fast_path": "already installed (fast path)" in log,
            "extraction_s": float(m.group(2)) if m else None,
            "start_to_ready_s": (ts[protocol.HEADERS_READY] - ts[protocol.HEADERS_START]) / 1e9,
            "program_start_to_ready_s": (ts[protocol.HEADERS_READY] - ts[protocol.PROGRAM_START]) / 1e9}


def guest_runs(home, initrd, label):
    kindling(home, "create", "--name", label, "--initrd", str(initrd), "--", "sleep", "3600")
    try:
        kindling(home, "wait", label, "--for", "running", "--timeout", "300")
        first = boot_result(home, label)
        kindling(home, "stop", label)
        kindling(home, "start", label)
        kindling(home, "wait", label, "--for", "running", "--timeout", "300")
        second = boot_result(home, label)
    finally:
        kindling(home, "rm", label, check=False)
    return first, second


# --- main ----------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="boots with and without headers, each")
    ap.add_argument("--guest-runs", type=int, default=1, help="guest installs per compression")
    ap.add_argument("--compressions", default="gz,xz")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from image_build import build, cache, debs, headers, initrd, kernel
    cache_dir = cache.default_cache_dir()
    debs.use_memo(cache_dir)
    results = {"compression": {}, "boot": {}}
    with tempfile.TemporaryDirectory(prefix="kindling-bench-headers-", dir="/var/tmp") as tmp:
        tmp = Path(tmp)
        plain = build.build_all(build.BuildOptions(out_dir=tmp / "plain", headers=False))
        with_headers = build.build_all(build.BuildOptions(out_dir=tmp / "with"))
        kern = kernel.resolve(None, None, cache_dir)
        home = tmp / "home"
        images = {}
        for comp in args.compressions.split(","):
            h = headers.build(kern, cache_dir, build.builder_hash(), compression=comp)
            images[comp] = tmp / f"initrd-{comp}.img"
            initrd.assemble(images[comp], plain.initrd, h)
            host_s, files = host_install(h.tarball, kern.release)
            results["compression"][comp] = {
                "size": h.tarball.stat().st_size, "files": files, "host_install_s": host_s,
                "host_decompress_s": host_decompress(h.tarball), "guest": []}
        for i in range(args.guest_runs):     # interleaved: the noise hits every compression alike
            for comp, image in images.items():
                first, second = guest_runs(home, image, f"h{comp}{i}")
                results["compression"][comp]["guest"].append((first, second))
                print(f"{comp} guest run {i + 1}: extraction {first['extraction_s']:.2f} s, "
                      f"START->READY {first['start_to_ready_s']:.2f} s; second boot fast path "
                      f"{second['fast_path']}, START->READY {second['start_to_ready_s']:.3f} s", file=sys.stderr)

        boots = {"headers": [], "no-headers": []}
        if args.runs:
            one_boot(tmp / "warm", ["--agent", "serial"])  # page cache; not counted
        for i in range(args.runs):
            for label, extra in (("headers", []), ("no-headers", ["--no-headers"])):
                wall, stages = one_boot(tmp / f"{label}{i}", ["--agent", "serial", *extra])
                k, p = boot_measures(stages)
                boots[label].append({"kernel": k, "pid1": p, "wall": wall})
                print(f"run {i + 1}/{args.runs} {label:10}: kernel {k:.3f} s, PID 1 -> PROGRAM-START "
                      f"{p:.3f} s, wall {wall:.2f} s", file=sys.stderr)
        results["boot"] = boots
        results["initrd_bytes"] = {"headers": with_headers.initrd.stat().st_size,
                                   "no-headers": plain.initrd.stat().st_size}

    print("\nkernel headers: compression (median; guest = TCG, first boot / second boot)")
    print(f"{'':4} {'size MiB':>9} {'files':>6} {'host decomp s':>13} {'host install s':>14} "
          f"{'guest extract s':>15} {'guest fast s':>12}")
    for comp, row in results["compression"].items():
        ext = statistics.median(f["extraction_s"] for f, _ in row["guest"]) if row["guest"] else float("nan")
        fast = statistics.median(s["start_to_ready_s"] for _, s in row["guest"]) if row["guest"] else float("nan")
        print(f"{comp:4} {row['size'] / 2**20:9.1f} {row['files']:6} {row['host_decompress_s']:13.2f} "
              f"{row['host_install_s']:14.2f} {ext:15.2f} {fast:12.3f}")
    if args.runs:
        print(f"\nboot cost: medians over {args.runs} runs each, interleaved, `kindling run -- true`")
        print(f"{'measure (s)':32} {'headers':>9} {'no-headers':>10}")
        for key, label in (("kernel", "kernel start -> PID 1 (guest)"),
                           ("pid1", "PID 1 -> PROGRAM-START (guest)"), ("wall", "host wall create -> exit")):
            h = statistics.median(r[key] for r in boots["headers"])
            n = statistics.median(r[key] for r in boots["no-headers"])
            print(f"{label:32} {h:9.3f} {n:10.3f}")
    sizes = results["initrd_bytes"]
    print(f"initrd: {sizes['headers'] / 2**20:.1f} MiB with headers, {sizes['no-headers'] / 2**20:.1f} MiB without")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
