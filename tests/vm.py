"""Helpers for tests that boot real VMs under QEMU/TCG with `kindling run`.

Nested KVM on these machines is unusable, so every VM test forces TCG.  The
images come from the shared build cache (built once, ~0.1 s when warm).
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDLING = [sys.executable, "-m", "host_shim.cli"]


def require_qemu():
    """Fail loudly (never skip) when QEMU is missing: `make test` installs it."""
    assert shutil.which("qemu-system-x86_64"), \
        "qemu-system-x86_64 not found: run `make test` (it installs qemu-system-x86)"


def qemu_pids_using(path):
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64") and any(str(path).encode() in a for a in argv):
            pids.append(int(entry.name))
    return pids


@contextlib.contextmanager
def private_home(prefix):
    """A short KINDLING_HOME (the QMP socket path must fit in sun_path); no VM outlives it."""
    require_qemu()
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        delete_instances(path)                           # with their network namespaces
        for pid in qemu_pids_using(path):                # a failed test must not leak VMs
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)


def delete_instances(home):
    """`kindling delete` every instance of `home`: removing the directory alone left each
    --net instance's network namespace behind (kindling-ID, three per run of
    tests/test_vm_fork.py)."""
    listed = kindling(home, "list", "--json", check=False, timeout=60)
    if listed.returncode != 0:
        return
    for instance in json.loads(listed.stdout):
        kindling(home, "delete", instance["id"], check=False, timeout=120)


def kindling_run(home, *args, timeout=300):
    """`kindling run --accel tcg ARGS`; asserts no QEMU and no instance dir is left behind."""
    require_qemu()
    env = dict(os.environ, KINDLING_HOME=str(home), KINDLING_ACCEL="tcg")
    result = subprocess.run([*KINDLING, "run", "--timeout", "120", *args], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    assert qemu_pids_using(home) == []
    return result


def env_for(home: Path) -> dict:
    return dict(os.environ, KINDLING_HOME=str(home), KINDLING_ACCEL="tcg")


def kindling(home: Path, *args, timeout: float = 300, check: bool = True):
    """One `kindling` command (text output); with `check`, it must succeed."""
    result = subprocess.run([*KINDLING, *args], cwd=ROOT, env=env_for(home),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=timeout)
    if check:
        assert result.returncode == 0, f"kindling {' '.join(args)}:\n{result.stderr}"
    return result


def kindling_json(home: Path, command: str, *args, **kw):
    return json.loads(kindling(home, command, "--json", *args, **kw).stdout)


def eventually(check, what: str, timeout: float = 60):
    """Poll `check` (program output follows PROGRAM-START by a moment, and so on)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


NEVER_READY_INIT = b"#!/bin/sh\nexec /bin/sleep 3600\n"


def tiny_initrd(directory: Path, init: bytes, name: str) -> Path:
    """bench/floor.py's initrd (busybox sh, date, sleep) with `init` as its /init."""
    from image_build import busybox, cpio
    from image_build.cache import default_cache_dir
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    import floor    # noqa: E402  (bench/floor.py: one definition of the tiny archive)

    _, binary = busybox.fetch(default_cache_dir())
    entries = floor.entries(binary)
    assert [e.name for e in entries].count("init") == 1, "bench/floor.py has no single /init"
    entries = [cpio.data("init", init, 0o755) if e.name == "init" else e for e in entries]
    path = directory / name
    with open(path, "wb") as f:
        cpio.write(entries, f)
    return path


def never_ready_initrd(directory: Path) -> Path:
    """An /init that never prints a marker: booted with `create --initrd ... --agent none
    --no-headers`, the guest stays Initializing for as long as it runs, however fast the
    machine is (KVM or TCG).  For tests of what happens during Initializing, which a real
    guest may already have left."""
    return tiny_initrd(directory, NEVER_READY_INIT, "initrd-never-ready.img")


def never_ready_args(directory: Path) -> list[str]:
    """`kindling create` options for a guest that stays Initializing (never_ready_initrd)."""
    return ["--initrd", str(never_ready_initrd(directory)), "--agent", "none", "--no-headers"]


# A program that counts in memory and in tmpfs, printing `tick N` every 0.2 s, and serves TCP on
# port 8080: the snapshot and fork tests see from its console whether it went on where it was.
COUNTER_PROGRAM = """
mkdir -p /cnt && mount -t tmpfs none /cnt
(while :; do echo served-by-guest | nc -l -p 8080; done) &
i=0
while :; do i=$((i+1)); echo $i > /cnt/count; echo tick $i; sleep 0.2; done
"""
COUNTER_TICK = re.compile(r"^tick (\d+)\r?$", re.M)
