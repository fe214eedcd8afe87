"""Faults with a real guest (issue 15, part 3), each with nothing lost.

Three guests, seven QEMU launches in all (three of them a busybox initrd that never
gets past Initializing, which costs next to nothing):

* `spin` (never Running): QEMU SIGKILLed during boot, then two `kindling` processes
  at once on it: two `stop`s and an `inspect`, two `start`s, `delete` with `inspect`.
* `prog` (a program that exits with the code written to /root/go): its serial log
  deleted while Running, then rotated by hand while Running; QEMU SIGKILLed while
  Running; the overlay's data written before each kill is there after `start`.
* `tiny` (a 24 MiB overlay: the headers need ~80): HEADERS-FAILED with the reason,
  the program's exit code unaffected.
"""

import fcntl
import json
import os
import select
import signal
import subprocess
from pathlib import Path

import pytest

from host_shim.lifecycle import UNCLEAN_EXIT
from initsys import protocol

from tests.vm import (KINDLING, ROOT, env_for, eventually, kindling, kindling_json,
                      never_ready_args, private_home)

pytestmark = pytest.mark.vm

BOOT_TIMEOUT = "300"
HEADERS_TIMEOUT = 600
STATUS = "/run/kindling/kernel-headers.status"
WAIT_FOR_GO = ("until [ -f /root/go ]; do sleep 0.1; done; "
               "code=$(cat /root/go); rm /root/go; sync; exit $code")


@pytest.fixture(scope="module")
def home():
    with private_home("kv-") as path:
        yield path


def inspect(home: Path, name: str) -> dict:
    return kindling_json(home, "inspect", name)


def exec_sh(home: Path, name: str, script: str) -> str:
    return kindling(home, "exec", name, "--", "sh", "-c", script).stdout


def kill_qemu(home: Path, name: str) -> None:
    """SIGKILL the instance's QEMU and wait (pidfd) until it is gone."""
    pid = inspect(home, name)["pid"]
    assert pid, f"{name} has no QEMU"
    fd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGKILL)
        assert select.select([fd], [], [], 60)[0], f"QEMU {pid} survived SIGKILL for 60 s"
    finally:
        os.close(fd)


def assert_killed(home: Path, name: str) -> dict:
    info = inspect(home, name)
    assert info["state"] == "Stopped", info
    assert info["vmm_exit"] == UNCLEAN_EXIT and "SIGKILL" in info["vmm_exit"], info
    return info


def metadata_of(home: Path, name: str) -> dict:
    """metadata.json read straight from the disk (fails on a corrupt file)."""
    [meta] = [m for m in (json.loads(p.read_text())
                          for p in (home / "instances").glob("*/metadata.json"))
              if m["name"] == name]
    return meta


def lock_waiters(lock: Path, procs: list[subprocess.Popen]) -> int:
    """How many of `procs` have `lock` open (they open it, then poll for the flock)."""
    count = 0
    for proc in procs:
        try:
            fds = list(Path(f"/proc/{proc.pid}/fd").iterdir())
        except FileNotFoundError:
            continue
        count += any(os.path.realpath(fd) == str(lock) for fd in fds if fd.is_symlink())
    return count


def at_once(home: Path, name: str, *commands: list[str]) -> list[subprocess.CompletedProcess]:
    """Run `kindling` commands on one instance at once: the test holds its meta.lock until
    every one of them is waiting for it, so they all contend for it together."""
    lock = Path(inspect(home, name)["dir"]) / "meta.lock"
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        procs = [subprocess.Popen([*KINDLING, *command], cwd=ROOT, env=env_for(home),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for command in commands]
        eventually(lambda: lock_waiters(lock, procs) == len(procs), "every command at the lock")
    finally:
        os.close(fd)
    results = []
    for proc, command in zip(procs, commands):
        out, err = proc.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(command, proc.returncode, out, err))
    return results


def assert_clean(result: subprocess.CompletedProcess, *allowed_errors: str) -> None:
    """Success, or a Kindling error (125) saying one of `allowed_errors`."""
    if result.returncode == 0:
        return
    assert result.returncode == 125 and any(e in result.stderr for e in allowed_errors), \
        (result.args, result.returncode, result.stderr)


def test_qemu_killed_during_boot_then_commands_at_once(home, tmp_path):
    kindling(home, "create", "--name", "spin", *never_ready_args(tmp_path), "--", "true")
    assert inspect(home, "spin")["state"] == "Initializing"
    kill_qemu(home, "spin")
    assert assert_killed(home, "spin")["boot"] == 1

    kindling(home, "start", "spin")
    assert inspect(home, "spin")["state"] == "Initializing"

    for result in at_once(home, "spin", ["stop", "spin"], ["stop", "spin"],
                          ["inspect", "--json", "spin"]):
        assert_clean(result)
    info = inspect(home, "spin")
    assert (info["state"], info["boot"]) == ("Stopped", 2)
    assert metadata_of(home, "spin")["state"] == "Stopped"

    for result in at_once(home, "spin", ["start", "spin"], ["start", "spin"]):
        assert_clean(result)
    info = inspect(home, "spin")
    assert (info["state"], info["boot"]) == ("Initializing", 3), info   # one boot, not two

    results = at_once(home, "spin", ["delete", "spin"], ["inspect", "--json", "spin"])
    assert_clean(results[0])
    assert_clean(results[1], "no such instance")
    assert kindling_json(home, "list") == []


def test_log_deleted_rotated_and_qemu_killed_while_running(home):
    kindling(home, "create", "--name", "prog", "--", "sh", "-c", WAIT_FOR_GO)
    kindling(home, "wait", "prog", "--for", "running", "--timeout", BOOT_TIMEOUT)
    logs = Path(inspect(home, "prog")["dir"]) / "logs"

    # Boot 1: the serial log deleted while Running; the exit is still seen.
    exec_sh(home, "prog", "echo first > /root/data && sync")
    (logs / "app.log").unlink()
    assert inspect(home, "prog")["state"] == "Running"
    exec_sh(home, "prog", "echo 7 > /root/go")
    waited = kindling(home, "wait", "prog", "--for", "stopped", "--timeout", "120")
    assert waited.stdout.strip() == "7"
    info = inspect(home, "prog")
    assert (info["state"], info["exit"]["code"]) == ("Stopped", 7), info

    # Boot 2: the log rotated by hand (renamed) while Running, then QEMU SIGKILLed.
    kindling(home, "start", "prog")
    kindling(home, "wait", "prog", "--for", "running", "--timeout", BOOT_TIMEOUT)
    assert exec_sh(home, "prog", "cat /root/data") == "first\n"
    exec_sh(home, "prog", "echo second > /root/data && sync")
    os.rename(logs / "app.log", logs / "app.log.by-hand")
    assert inspect(home, "prog")["state"] == "Running"
    kill_qemu(home, "prog")
    info = assert_killed(home, "prog")
    assert info["exit"] is None, info

    # Boot 3: what was written and synced before the kill is there.
    kindling(home, "start", "prog")
    kindling(home, "wait", "prog", "--for", "running", "--timeout", BOOT_TIMEOUT)
    assert exec_sh(home, "prog", "cat /root/data") == "second\n"
    exec_sh(home, "prog", "echo 9 > /root/go")
    waited = kindling(home, "wait", "prog", "--for", "stopped", "--timeout", "120")
    assert waited.stdout.strip() == "9"
    assert inspect(home, "prog")["vmm_exit"] != UNCLEAN_EXIT      # an orderly power-off
    kindling(home, "delete", "prog")


def test_overlay_full_while_headers_install(home):
    script = (f"i=0; until grep -q failed {STATUS} 2>/dev/null || [ $i -ge 6000 ]; do "
              f"sleep 0.1; i=$((i+1)); done; echo \"headers $(cat {STATUS})\"; exit 5")
    kindling(home, "create", "--name", "tiny", "--overlay-size", "24M", "--",
             "sh", "-c", script)
    try:
        waited = kindling(home, "wait", "tiny", "--for", "stopped",
                          "--timeout", str(HEADERS_TIMEOUT))
        logs = kindling(home, "logs", "tiny").stdout
        assert waited.stdout.strip() == "5", (inspect(home, "tiny"), logs[-3000:])
        assert "headers failed" in logs
        kindling(home, "analyze", "tiny")
        info = inspect(home, "tiny")
        assert info["exit"]["code"] == 5, info
        error = info["markers"][protocol.HEADERS_FAILED]["fields"]["error"]
        assert "No space left on device" in error, error
        assert protocol.HEADERS_READY not in info["markers"]
    finally:
        kindling(home, "delete", "tiny", check=False)
