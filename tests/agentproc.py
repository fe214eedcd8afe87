"""Helpers for the agent tests with real processes: an agent serving a unix socket.

The agent runs exactly as PID 1 would start it (`python -m agent.main`,
KINDLING_READY_FD, KINDLING_READY_FILE), only on the host, with its cwd in a
temporary directory and no chroot.
"""

import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0


def vm_rss_kib(pid="self"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no VmRSS line")


def process_gone(pid):
    """True when pid is not running (no /proc entry, or a zombie waiting for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):   # gone before the open, or between open and read
        return True


class AgentProcess:
    """`python -m agent.main --transport unix` in a subprocess; waits for its ready byte."""

    def __init__(self, *, argv_prefix=None, extra_env=None):
        # unix socket paths are limited to 108 bytes: keep the directory short
        self.dir = Path(tempfile.mkdtemp(prefix="kagent-", dir="/tmp"))
        self.socket = self.dir / "agent.sock"
        self.ready_file = self.dir / "run" / "kindling" / "agent.ready"   # its directory does not exist yet
        self.stderr_path = self.dir / "stderr"
        r, w = os.pipe()
        env = dict(os.environ, KINDLING_READY_FD=str(w), KINDLING_READY_FILE=str(self.ready_file),
                   PYTHONPATH=str(ROOT), **(extra_env or {}))
        argv = (argv_prefix or [sys.executable, "-m", "agent.main"]) + [
            "--transport", "unix", "--path", str(self.socket)]
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, pass_fds=[w], env=env, cwd=self.dir,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        os.close(w)
        try:
            ready, _, _ = select.select([r], [], [], READY_TIMEOUT)
            byte = os.read(r, 1) if ready else b""
        finally:
            os.close(r)
        if byte != b"R":
            self.stop()
            raise AssertionError(f"the agent did not become ready within {READY_TIMEOUT:.0f} s"
                                 f" (ready byte {byte!r}); stderr:\n{self.stderr()}")
        self.ready_line = self.proc.stdout.readline().decode()
        self.pid = self.proc.pid

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def rss_kib(self):
        return vm_rss_kib(self.pid)

    def stop(self, timeout=10.0):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.proc.returncode


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def agent():
    """A real agent process serving a unix socket, shared by a test module."""
    a = AgentProcess()
    yield a
    a.stop()
