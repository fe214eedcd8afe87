"""Module loading in the guest (issue 14): in order, in parallel, and without signatures.

Boots Kindling's initrd (built as for `create --no-headers`) with an extra cpio appended
whose /init is a small Python PID 1 that only times the module closure
(/usr/lib/kindling/modules.list) and then prints PROGRAM-START (the host runs it with
`--agent none`, so that is Running).  The variant comes on the kernel command line:

  seq    initsys.kmod.load_all(): one finit_module() after the other, as PID 1 does
  par    one thread per module, each waiting for its dependencies (the `depends=` of
         its .modinfo) before its finit_module(): independent modules load at once
  nosig  like seq, on copies whose appended signature was stripped on the host
         (measurement only: the kernel then verifies nothing and taints itself)

Runs are interleaved (seq, par, nosig, seq, ...), each a fresh VM with the same devices as
a default `create` (2 vCPUs).  Prints the median (min..max) milliseconds per variant, of
the load alone, measured inside the guest with CLOCK_MONOTONIC.

    .venv/bin/python bench/kmod_load.py [--runs 3] [--json FILE]
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

import trio  # noqa: E402

from host_shim import lifecycle, prepare  # noqa: E402
from host_shim.state import State  # noqa: E402
from image_build import cpio  # noqa: E402
from tests.newc import decompress, initrd_entries, split_initrd  # noqa: E402

VARIANTS = ("seq", "par", "nosig")
MODULES_LIST = "usr/lib/kindling/modules.list"
NOSIG_DIR = "kbench-nosig"
SIG_MAGIC = b"~Module signature appended~\n"
BOOT_TIMEOUT = 300.0

INIT = r'''#!/usr/bin/python3.11 -IS
# bench/kmod_load.py: PID 1 that only times the module closure, then says PROGRAM-START.
import os, sys, threading, time
sys.path.insert(0, "/usr/lib/kindling")
from initsys import kmod, protocol

def depends(path):
    data = open(path, "rb").read()
    at = data.find(b"\0depends=")
    if at < 0:
        return []
    raw = data[at + 9:data.index(b"\0", at + 9)].decode()
    return [d for d in raw.split(",") if d]

def name_of(path):
    base = path.rsplit("/", 1)[-1]
    return base[:base.index(".ko")].replace("-", "_")

def load_parallel(paths):
    done = {name_of(p): threading.Event() for p in paths}
    errors = []
    def one(path):
        try:
            for dep in depends(path):
                if dep in done:
                    done[dep].wait()
            kmod.load(path)
        except OSError as e:
            errors.append(e)
        finally:
            done[name_of(path)].set()
    threads = [threading.Thread(target=one, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors

import ctypes
os.makedirs("/proc", exist_ok=True)
libc = ctypes.CDLL(None, use_errno=True)
libc.mount(b"proc", b"/proc", b"proc", 0, None)
variant = next((a.split("=", 1)[1] for a in open("/proc/cmdline").read().split()
                if a.startswith("kbench_kmod=")), "seq")
def measure(variant):
    paths = kmod.module_paths()
    if variant == "nosig":
        paths = ["/NOSIG/" + p.lstrip("/") for p in paths]
    optional = set(kmod.module_paths(kmod.SOFTDEP_LIST))
    t = time.monotonic()
    if variant == "par":
        errors = load_parallel(paths)
    else:
        errors = []
        for p in paths:
            try:
                kmod.load(p)
            except OSError as e:
                errors.append(e)
    ms = (time.monotonic() - t) * 1000
    bad = [str(e) for e in errors if not any(o.split("/")[-1] in str(e) for o in optional)]
    print(f"KBENCH-KMOD variant={variant} ms={ms:.1f} modules={len(paths)} errors={len(bad)} {bad[:2]}", flush=True)

try:
    measure(variant)
except BaseException as e:
    print(f"KBENCH-KMOD variant={variant} ms=0 modules=0 errors=1 {type(e).__name__}: {e}", flush=True)
print(protocol.program_start_line("exec"), flush=True)
while True:
    time.sleep(3600)
'''.replace("/NOSIG/", "/" + NOSIG_DIR + "/")


def strip_signature(body: bytes) -> bytes:
    """The module without its appended signature (struct module_signature: 12 bytes,
    sig_len big-endian in the last 4, then the magic)."""
    if not body.endswith(SIG_MAGIC):
        return body
    info = body[-len(SIG_MAGIC) - 12:-len(SIG_MAGIC)]
    sig_len = int.from_bytes(info[8:12], "big")
    return body[:-len(SIG_MAGIC) - 12 - sig_len]


def make_initrd(base: Path, out: Path) -> tuple[Path, int]:
    """Kindling's initrd, decompressed (the kernel cannot find the end of an lz4 segment
    that something follows), + a cpio with the timing /init and the unsigned copies."""
    entries = initrd_entries(base)
    modules = [line.strip().lstrip("/") for line in entries[MODULES_LIST]["body"].decode().splitlines() if line.strip()]
    extra = [cpio.data("init", INIT.encode(), 0o755), cpio.directory(NOSIG_DIR)]
    made = {NOSIG_DIR}
    signed = 0
    for m in modules:
        parts = m.split("/")
        for i in range(1, len(parts)):
            d = f"{NOSIG_DIR}/{'/'.join(parts[:i])}"
            if d not in made:
                made.add(d)
                extra.append(cpio.directory(d))
        body = entries[m]["body"]
        signed += body.endswith(SIG_MAGIC)
        extra.append(cpio.data(f"{NOSIG_DIR}/{m}", strip_signature(body), 0o644))
    raw = base.read_bytes()
    _, rest = split_initrd(raw)
    with open(out, "wb") as f:
        f.write(raw[:len(raw) - len(rest)] + decompress(rest))
        cpio.write(extra, f)
    return out, signed


async def one_boot(home: Path, initrd: Path, variant: str) -> float:
    opts = prepare.CreateOptions(command=("sleep", "1"), initrd=initrd, agent="none", headers=False,
                                 kernel_args=(f"kbench_kmod={variant}",), accel="tcg")
    instance, _ = await lifecycle.create(opts, home)
    try:
        await lifecycle.wait(instance, State.RUNNING, timeout=BOOT_TIMEOUT)
        for line in instance.app_log.read_text(errors="replace").splitlines():
            if line.startswith("KBENCH-KMOD "):
                fields = dict(f.split("=", 1) for f in line.split()[1:4])
                if line.split()[4] != "errors=0":
                    raise SystemExit(f"module loading failed in the guest: {line}")
                return float(fields["ms"])
        raise SystemExit(f"no KBENCH-KMOD line on the console of {instance.app_log}")
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(60):
            await lifecycle.delete(instance)


async def run(args) -> dict:
    home = Path(tempfile.mkdtemp(prefix="kbk-", dir="/tmp"))
    artifacts = prepare.build_artifacts(prepare.CreateOptions(command=("true",), headers=False), home)
    initrd, signed = make_initrd(Path(artifacts.initrd), home / "initrd-kmod.img")
    times = {v: [] for v in VARIANTS}
    await one_boot(home, initrd, "seq")                      # warm the page cache (not counted)
    for _ in range(args.runs):
        for v in VARIANTS:
            times[v].append(await one_boot(home, initrd, v))
            print(f"{v:6} {times[v][-1]:7.1f} ms", flush=True)
    return {"signed_modules": signed, "ms": times}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    r = trio.run(run, args)
    for v, ms in r["ms"].items():
        print(f"{v:6} median {statistics.median(ms):7.1f} ms ({min(ms):.1f}..{max(ms):.1f})")
    print(f"{r['signed_modules']} signed modules in the closure")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
