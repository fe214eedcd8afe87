"""Host-side helpers the benchmarks share: `kindling` commands in a private
KINDLING_HOME under TCG, with the CPU time of every command counted, and a
cleanup that deletes every instance the benchmark created -- even on failure.

    with Shim("kindling-bench-") as shim:
        shim.json("create", "--name", "a", "--", "sleep", "3600")
        shim.json("wait", "a", "--for", "running")
    # every instance deleted, the home removed; shim.cpu_s: user+sys of the commands
"""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDLING = [sys.executable, "-m", "host_shim.cli"]
COMMAND_TIMEOUT = 600
SLEEPER = ["sleep", "3600"]


class CommandFailed(RuntimeError):
    pass


def children_cpu_s():
    """user+sys of every waited-for child process of this one so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def proc_cpu_s(pid):
    """user+sys of a running process from /proc/<pid>/stat (None when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Shim:
    """A private KINDLING_HOME (short: the QMP socket path must fit in sun_path)."""

    def __init__(self, prefix="kb-"):
        self.home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.env = dict(os.environ, KINDLING_HOME=str(self.home), KINDLING_ACCEL="tcg")
        self.created = []   # instance names, for cleanup
        self.qemu_pids = set()  # the VMMs of our instances (from inspect), the last resort of cleanup

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()

    def popen(self, *args):
        if args and args[0] == "create" and "--name" in args:
            self.created.append(args[args.index("--name") + 1])
        return subprocess.Popen([*KINDLING, *args], cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    @staticmethod
    def collect(popen, timeout=COMMAND_TIMEOUT):
        """Wait for a popen() command; its stdout, or CommandFailed."""
        try:
            out, err = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.communicate()
            raise CommandFailed(f"{' '.join(map(str, popen.args[2:]))}: no answer within {timeout} s") from None
        if popen.returncode != 0:
            raise CommandFailed(f"{' '.join(map(str, popen.args[2:]))} failed ({popen.returncode}):"
                                f" {err.strip()[-2000:]}")
        return out

    def run(self, *args, timeout=COMMAND_TIMEOUT):
        return self.collect(self.popen(*args), timeout)

    def json(self, *args, timeout=COMMAND_TIMEOUT):
        return json.loads(self.run(args[0], "--json", *args[1:], timeout=timeout))

    def inspect(self, name):
        info = self.json("inspect", name)
        if info.get("pid"):
            self.qemu_pids.add(info["pid"])
        return info

    def exec(self, name, *argv, timeout=120):
        return self.run("exec", name, "--", *argv, timeout=timeout)

    def cleanup(self):
        deletes = [self.popen("delete", name) for name in self.created]
        for p in deletes:
            try:
                p.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
        for pid in self.qemu_pids:  # only VMMs of our own instances, should a delete have failed
            cmdline = Path(f"/proc/{pid}/cmdline")
            try:
                if str(self.home).encode() in cmdline.read_bytes():
                    os.kill(pid, signal.SIGKILL)
                    print(f"cleanup: killed the VMM {pid} left behind", file=sys.stderr)
            except OSError:
                pass
        self.created.clear()
        shutil.rmtree(self.home, ignore_errors=True)

