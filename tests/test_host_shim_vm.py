"""`kindling run` booting a real VM under QEMU/TCG (slow: ~5 s of boot per test).

Uses the real image builder (Debian cloud kernel via apt, busybox rootfs) and the
shared build cache, and a private KINDLING_HOME so that leftover QEMU processes
can be found by their argv.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU not installed"),
]

KINDLING = [sys.executable, "-m", "host_shim.cli"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def home():
    path = Path(tempfile.mkdtemp(prefix="kvm-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def qemu_processes_using(path: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64") and any(
                str(path).encode() in a for a in argv):
            pids.append(int(entry.name))
    return pids


def kindling_run(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, KINDLING_HOME=str(home), KINDLING_ACCEL="tcg")
    result = subprocess.run([*KINDLING, "run", "--timeout", "120", *args], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=timeout)
    assert qemu_processes_using(home) == []
    assert list((home / "instances").iterdir()) == []
    return result


def test_echo_hello(home):
    result = kindling_run(home, "--", "echo", "hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\n"
    err = result.stderr
    assert re.search(r"^kindling: Initializing \(0\.\d\d s\)$", err, re.M)
    assert "kindling: Running (" in err
    assert 'kindling: exited code=0 "success" (' in err
    assert "HYPEMAN" not in result.stdout + err
    lines = err.splitlines()
    assert any(line.split()[:1] == ["kernel"] for line in lines)     # guest stage
    assert any(line.strip().startswith("QEMU exited") for line in lines)


def test_exit_code_and_env_pass_through(home):
    result = kindling_run(home, "--env", "GREETING=hi there", "--workdir", "/tmp", "--",
                          "sh", "-c", 'echo "$GREETING from $(pwd)"; exit 7')
    assert result.returncode == 7, result.stderr
    assert result.stdout == "hi there from /tmp\n"
    assert 'kindling: exited code=7 "exit code 7"' in result.stderr


def test_bad_config_is_a_guest_fatal(home, tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{"entrypoint": 42}')
    result = kindling_run(home, "--config-json", str(bad))
    assert result.returncode == 125
    assert ("kindling: error: guest failed in stage config: config.json field 'entrypoint'"
            in result.stderr)
