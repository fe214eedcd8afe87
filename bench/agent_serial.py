"""Agent benchmark (issue 5) over a real virtio-serial port, in a TCG VM.

Boots the current initrd (`kindling build`) with an extra cpio appended that
replaces /init by a minimal PID 1 which only mounts, loads the modules, links
/dev/virtio-ports/org.kindling.agent.0 and runs `agent.main.serve()` on it --
no disks, no program: it measures the agent and its protocol, not the boot.
A few host coreutils (and dash as sh) go into the overlay so there is
something to exec.  Prints, from the host's side of the port:

  exec round trip of `true` (median of --runs), 64 MiB copied in and out
  (sha256 checked), 32 MiB of stdout, the hello latency of reconnecting hosts,
  and the recovery after a host that died in the middle of a frame.

    .venv/bin/python bench/agent_serial.py [--runs 20] [--memory 1024]

Figures, not assertions; the machine is shared and noisy.
"""

import argparse
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from agent import wire  # noqa: E402
from host_shim.accel import Accel  # noqa: E402
from host_shim.agent_client import open_agent  # noqa: E402
from host_shim.qemu import VMSpec, build_argv  # noqa: E402
from image_build import cpio  # noqa: E402

INIT = """#!/usr/bin/python3.11 -IS
# bench/agent_serial.py: PID 1 that only serves the agent on virtio-serial.
import os, sys
sys.path.insert(0, "/usr/lib/kindling")
try:
    from initsys import kmod, mounts, ports
    mounts.mount_basic()
    kmod.load_all()
    path = ports.wait_for_port("org.kindling.agent.0", 10)
    import agent.main
    agent.main.serve({"transport": "serial", "path": path})
except BaseException:
    import traceback
    traceback.print_exc()
finally:
    import ctypes
    os.sync()
    ctypes.CDLL(None).reboot(0x4321FEDC)
"""

TOOLS = ["true", "cat", "head", "sha256sum", "stty", "sleep"]


def make_initrd(work):
    base = ROOT / "build" / "initrd.img"
    if not base.is_file():
        raise SystemExit(f"{base} not found: run `.venv/bin/kindling build` first")
    plain = work / "initrd"
    with open(plain, "wb") as out:
        subprocess.run(["lz4", "-dc", str(base)], stdout=out, check=True, timeout=120)
    init = work / "init"
    init.write_text(INIT)
    entries = [cpio.file("init", init, 0o755), cpio.file("usr/bin/sh", Path("/bin/dash"), 0o755),
               cpio.directory("tmp", 0o1777)]
    for tool in TOOLS:
        entries.append(cpio.file(f"usr/bin/{tool}", Path(shutil.which(tool)), 0o755))
    with open(plain, "ab") as out:
        cpio.write(entries, out)
    return plain


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def wait_for_text(path, text, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if text in path.read_text(errors="replace"):
                return
        except FileNotFoundError:
            pass
        await trio.sleep(0.05)
    raise SystemExit(f"no {text!r} on the console within {timeout} s")


async def bench(args, work):
    sock, console = work / "agent.sock", work / "console.log"
    spec = VMSpec(kernel=str(ROOT / "build" / "kernel"), initrd=str(make_initrd(work)), disks=(),
                  console_log=str(console), qmp_socket=str(work / "qmp.sock"), accel=Accel.TCG,
                  machine="pc", memory_mib=args.memory,
                  extra_args=("-device", "virtio-serial-pci",
                              "-chardev", f"socket,path={sock},server=on,wait=off,id=c0",
                              "-device", "virtserialport,chardev=c0,name=org.kindling.agent.0"))
    t0 = time.monotonic()
    qemu = await trio.lowlevel.open_process(build_argv(spec, "qemu-system-x86_64"), stdin=subprocess.DEVNULL)
    try:
        await wait_for_text(console, "HYPEMAN-AGENT-READY", 180)
        print(f"agent ready               {time.monotonic() - t0:6.2f} s after launch")
        async with open_agent(sock, timeout=30) as a:
            times = []
            for _ in range(args.runs):
                s = time.perf_counter()
                assert (await a.exec(["true"])).code == 0
                times.append(time.perf_counter() - s)
            print(f"exec `true` round trip    {statistics.median(times) * 1000:6.1f} ms median"
                  f" ({min(times) * 1000:.1f}..{max(times) * 1000:.1f}, {args.runs} runs)")
            src, back = work / "in.bin", work / "back.bin"
            with open(src, "wb") as f:
                for _ in range(64):
                    f.write(os.urandom(1 << 20))
            s = time.monotonic()
            await a.copy_to(src, "/tmp/in.bin")
            t_in = time.monotonic() - s
            s = time.monotonic()
            await a.copy_from("/tmp/in.bin", back)
            t_out = time.monotonic() - s
            ok = sha256(src) == sha256(back)
            print(f"64 MiB into the guest     {64 / t_in:6.1f} MiB/s")
            print(f"64 MiB out of the guest   {64 / t_out:6.1f} MiB/s   (sha256 equal: {ok})")
            got = 0

            async def count(data):
                nonlocal got
                got += len(data)

            s = time.monotonic()
            await a.exec(["head", "-c", str(32 << 20), "/dev/zero"], stdout=count)
            print(f"32 MiB of stdout          {got / (1 << 20) / (time.monotonic() - s):6.1f} MiB/s")
        hellos = []
        for _ in range(5):
            s = time.monotonic()
            async with open_agent(sock, timeout=30) as a:
                hellos.append(time.monotonic() - s)
                await a.exec(["true"])
        print(f"reconnect hello           {statistics.median(hellos) * 1000:6.1f} ms median"
              f" ({', '.join(f'{h * 1000:.0f}' for h in hellos)})")
        raw = socket.socket(socket.AF_UNIX)
        raw.connect(str(sock))
        raw.sendall(wire.MAGIC + wire.encode(wire.client_hello(wire.new_nonce())) + b"\x00\x00\x10")
        await trio.sleep(0.5)
        raw.close()
        s = time.monotonic()
        async with open_agent(sock, timeout=30) as a:
            print(f"after a mid-frame death   {(time.monotonic() - s) * 1000:6.0f} ms to a hello (reconnects)")
            await a.shutdown()
        with trio.fail_after(60):
            await qemu.wait()
    finally:
        if qemu.returncode is None:
            qemu.kill()
            await qemu.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--memory", type=int, default=1024, help="guest MiB (64 MiB file lives in RAM)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="kbench-", dir="/tmp") as work:
        trio.run(bench, args, Path(work))


if __name__ == "__main__":
    main()
