"""`kindling run` booting real VMs under QEMU/TCG (slow: ~5 s of boot per test).

Uses the real image builder (Debian cloud kernel via apt, busybox rootfs) and the
shared build cache, and a private KINDLING_HOME so that leftover QEMU processes
can be found by their argv.  Faults are real too: QEMU killed with SIGKILL, QEMU
frozen with SIGSTOP (it then answers neither QMP nor SIGTERM), a guest program
that prints an EXIT sentinel and does not end.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from host_shim import cli, runner, vmm
from initsys import protocol

from tests.vm import (KINDLING, ROOT, never_ready_args, qemu_pids_using, require_qemu,
                      tiny_initrd)

pytestmark = pytest.mark.vm



@pytest.fixture
def home():
    require_qemu()
    path = Path(tempfile.mkdtemp(prefix="kvm-"))
    yield path
    for pid in qemu_pids_using(path):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


def env_for(home: Path) -> dict:
    return dict(os.environ, KINDLING_HOME=str(home), KINDLING_ACCEL="tcg")


def nothing_left(home: Path) -> None:
    assert qemu_pids_using(home) == []
    assert list((home / "instances").iterdir()) == []


def kindling_run(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([*KINDLING, "run", "--timeout", "120", *args], cwd=ROOT,
                            env=env_for(home), stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=timeout)
    assert qemu_pids_using(home) == []
    return result


def start_run(home: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*KINDLING, "run", *args], cwd=ROOT, env=env_for(home),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def read_until(stream, text: str, timeout: float = 240) -> list[str]:
    deadline = time.monotonic() + timeout
    seen = []
    while not seen or text not in seen[-1]:
        line = stream.readline()
        assert line, f"stream ended before {text!r}: {seen}"
        assert time.monotonic() < deadline, f"no {text!r} within {timeout} s"
        seen.append(line)
    return seen


def test_echo_hello(home):
    result = kindling_run(home, "--", "echo", "hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\n"
    err = result.stderr
    assert re.search(r"^kindling: Initializing \(\d+\.\d\d s\)$", err, re.M)
    assert re.search(r"^kindling: Running \(\d+\.\d\d s\)$", err, re.M)
    assert 'kindling: exited code=0 "success" (' in err
    assert "HYPEMAN" not in result.stdout + err
    lines = err.splitlines()
    assert any(line.split()[:1] == ["kernel"] for line in lines)     # guest stage
    for event in ("launch", "first console byte", "PROGRAM-START seen", "Running", "EXIT seen",
                  "QEMU exited"):
        assert any(line.strip().startswith(event) for line in lines), event
    assert re.search(r"^time to Running: \d+\.\d{3} s$", err, re.M)
    nothing_left(home)


def test_exit_code_and_env_pass_through(home):
    result = kindling_run(home, "--env", "GREETING=hi there", "--workdir", "/tmp", "--",
                          "sh", "-c", 'echo "$GREETING from $(pwd)"; exit 7')
    assert result.returncode == 7, result.stderr
    assert result.stdout == "hi there from /tmp\n"
    assert 'kindling: exited code=7 "exit code 7"' in result.stderr


def test_run_json_prints_events(home):
    """run --json: JSON lines of state, output and exit events; --memory with a unit."""
    result = kindling_run(home, "--json", "--memory", "384M", "--name", "js", "--",
                          "sh", "-c", "echo hello; exit 3")
    assert result.returncode == 3, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    states = [e for e in lines if e["event"] == "state"]
    assert [e["state"] for e in states] == ["Initializing", "Running"]
    assert all(e["name"] == "js" and len(e["id"]) == 12 for e in states)
    assert {"event": "output", "stream": "stdout", "data": "hello"} in lines
    assert lines[-1] == {"event": "exit", "code": 3}
    nothing_left(home)


def test_bad_config_is_a_guest_fatal(home, tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{"entrypoint": 42}')
    result = kindling_run(home, "--config-json", str(bad))
    assert result.returncode == 125
    assert ("kindling: error: guest failed in stage config: config.json field 'entrypoint'"
            in result.stderr)
    assert "kindling: Running" not in result.stderr
    nothing_left(home)


def test_config_disk_hook(home, tmp_path):
    from image_build.disks import make_config_disk
    disk = make_config_disk({"entrypoint": ["sh", "-c", "echo from the disk; exit 4"],
                             "skip_guest_agent": True, "skip_kernel_headers": True},
                            tmp_path / "config.img")
    result = kindling_run(home, "--verbose", "--config-disk", str(disk))
    assert result.returncode == 4, result.stderr
    assert result.stdout == "from the disk\n"
    assert f"file={disk},if=none,id=disk2,format=raw,readonly=on" in result.stderr


def test_verbose_shows_boot_and_the_qemu_command(home):
    result = kindling_run(home, "--verbose", "--memory", "384", "--cpus", "1", "--", "true")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    command = next(l for l in result.stderr.splitlines() if l.startswith("kindling: running: "))
    argv = command.split()
    assert argv[argv.index("-m") + 1] == "384" and argv[argv.index("-smp") + 1] == "1"
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert "-pidfile" in argv and "-S" in argv
    assert [a.rsplit("serial=", 1)[1] for a in argv if "serial=" in a] == [
        "rootfs", "overlay", "config"]
    assert "reboot: Power down" in result.stderr         # kernel chatter, on stderr


def test_keep_keeps_the_instance(home):
    result = kindling_run(home, "--keep", "--name", "kept", "--", "sh", "-c", "echo x; exit 3")
    assert result.returncode == 3, result.stderr
    (instance,) = list((home / "instances").iterdir())
    assert f"kindling: instance kept: {instance}" in result.stderr
    assert "HYPEMAN-EXIT" in (instance / "logs" / "app.log").read_text()
    listed = json.loads(subprocess.run([*KINDLING, "list", "--json"], env=env_for(home),
                                       cwd=ROOT, capture_output=True, text=True,
                                       timeout=60).stdout)
    assert [(i["name"], i["state"]) for i in listed] == [("kept", "Stopped")]
    assert listed[0]["time_to_running"] > 0
    logs = subprocess.run([*KINDLING, "logs", "kept"], env=env_for(home), cwd=ROOT,
                          capture_output=True, text=True, timeout=60).stdout
    assert "x" in logs.splitlines() and "HYPEMAN" not in logs
    subprocess.run([*KINDLING, "delete", "kept"], env=env_for(home), cwd=ROOT, check=True,
                   capture_output=True, timeout=60)
    nothing_left(home)


def test_timeout_stops_a_sleeping_guest(home):
    started = time.monotonic()
    # 60 s: the whole boot must fit in it, also on a loaded CI machine (a boot took 20 s at load 30)
    result = kindling_run(home, "--timeout", "60", "--", "sh", "-c", "echo sleeping; sleep 1000")
    assert result.returncode == 125, result.stderr
    assert time.monotonic() - started < 150
    assert result.stdout == "sleeping\n"
    assert "kindling: Running (" in result.stderr
    assert "kindling: error: timed out after 60 s before the program finished" in result.stderr
    nothing_left(home)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_qemu(home, signum):
    shim = start_run(home, "--", "sh", "-c", "echo running; sleep 1000")
    try:
        read_until(shim.stderr, "kindling: Running")
        assert shim.stdout.readline() == "running\n"
        assert len(qemu_pids_using(home)) == 1
        shim.send_signal(signum)
        out, err = shim.communicate(timeout=60)
    finally:
        if shim.poll() is None:
            shim.kill()
            shim.wait()
    assert shim.returncode == 128 + signum, err
    assert f"kindling: error: interrupted by {signal.Signals(signum).name}" in err
    assert out == ""
    nothing_left(home)


def test_signal_while_booting_stops_qemu(home, tmp_path):
    """The guest's /init never prints a marker, so the signal surely comes during the boot
    (a real guest may be Running already by then, under KVM)."""
    shim = start_run(home, *never_ready_args(tmp_path), "--", "sleep", "1000")
    try:
        read_until(shim.stderr, "kindling: Initializing")
        shim.send_signal(signal.SIGTERM)
        out, err = shim.communicate(timeout=60)
    finally:
        if shim.poll() is None:
            shim.kill()
            shim.wait()
    assert shim.returncode == 128 + signal.SIGTERM, err
    assert "kindling: error: interrupted by SIGTERM" in err and "kindling: Running" not in err
    nothing_left(home)


def test_closed_stdout_does_not_stop_the_run(home):
    shim = start_run(home, "--", "sh", "-c",
                     "echo line 0; sleep 1; i=1; while [ $i -lt 2000 ]; do echo line $i; "
                     "i=$((i+1)); done; exit 5")
    assert shim.stdout.readline() == "line 0\n"
    shim.stdout.close()
    err = shim.stderr.read()
    assert shim.wait(timeout=240) == 5, err
    assert 'kindling: exited code=5 "exit code 5"' in err
    assert "Traceback" not in err and "BrokenPipe" not in err
    nothing_left(home)


def test_qemu_killed_mid_run(home):
    shim = start_run(home, "--", "sh", "-c", "echo up; sleep 1000")
    try:
        read_until(shim.stderr, "kindling: Running")
        (pid,) = qemu_pids_using(home)
        os.kill(pid, signal.SIGKILL)
        out, err = shim.communicate(timeout=60)
    finally:
        if shim.poll() is None:
            shim.kill()
            shim.wait()
    assert shim.returncode == 125, err
    assert ("kindling: error: the VM ended before the program finished "
            "(QEMU killed by signal 9 (SIGKILL))") in err
    assert "up" in err                       # the last console lines, in the hint
    nothing_left(home)


# --- in-process runs: fault injection with shortened grace periods ---------------

def _in_process_run(monkeypatch, home: Path, *args: str) -> int:
    monkeypatch.setenv("KINDLING_HOME", str(home))
    monkeypatch.setenv("KINDLING_ACCEL", "tcg")
    return cli.main(["run", *args])


# An /init (tests/vm.py tiny_initrd) that starts "the program", reports its exit, and then
# neither powers off nor ends.  Our PID 1 always powers off after EXIT, and a program's own
# EXIT line is not believed (the control channel vouches for none), so only a PID 1 of its
# own makes this guest; an --initrd boot has no control port, its console markers count.
NO_POWEROFF_INIT = (b"#!/bin/sh\n"
                    b'echo "HYPEMAN-PROGRAM-START ts=$(date -u +%Y-%m-%dT%H:%M:%S).000000000Z '
                    b'mode=exec"\n'
                    b'echo \'HYPEMAN-EXIT code=3 message="exit code 3"\'\n'
                    b"exec /bin/sleep 1000\n")


def test_guest_that_does_not_power_off_is_stopped(home, monkeypatch, capsys, tmp_path):
    """A guest whose init reports EXIT and keeps running: it never powers off, so after
    POWEROFF_GRACE kindling stops QEMU and passes the code on."""
    monkeypatch.setattr(runner, "POWEROFF_GRACE", 1.0)
    initrd = tiny_initrd(tmp_path, NO_POWEROFF_INIT, "initrd-no-poweroff.img")
    code = _in_process_run(monkeypatch, home, "--initrd", str(initrd), "--agent", "none",
                           "--no-headers", "--", "true")
    err = capsys.readouterr().err
    assert code == 3, err
    assert 'kindling: exited code=3 "exit code 3"' in err
    nothing_left(home)


# An /init whose console carries, before its own EXIT, an off-grammar EXIT line (hypeman's
# host ignores it) and a well-formed look-alike: read from the console alone (--initrd: no
# control port), the last EXIT is the one that counts, as on hypeman's host.
LAST_EXIT_INIT = (b"#!/bin/sh\n"
                  b'echo "HYPEMAN-PROGRAM-START ts=$(date -u +%Y-%m-%dT%H:%M:%S).000000000Z '
                  b'mode=exec"\n'
                  b'echo \'HYPEMAN-EXIT code=abc message="not a marker"\'\n'
                  b'echo \'HYPEMAN-EXIT message="reversed" code=9\'\n'
                  b'echo \'HYPEMAN-EXIT code=0 message="success"\'\n'
                  b'echo \'HYPEMAN-EXIT code=3 message="exit code 3"\'\n'
                  b"exec /bin/sleep 1000\n")


def test_console_only_host_takes_the_last_well_formed_exit(home, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(runner, "POWEROFF_GRACE", 1.0)
    initrd = tiny_initrd(tmp_path, LAST_EXIT_INIT, "initrd-last-exit.img")
    code = _in_process_run(monkeypatch, home, "--initrd", str(initrd), "--agent", "none",
                           "--no-headers", "--", "true")
    err = capsys.readouterr().err
    assert code == 3, err
    assert "unreadable exit code" not in err
    nothing_left(home)


def proc_state(pid: int) -> str:
    """The one-letter state in /proc/PID/stat ('T': stopped by a signal)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def freeze_qemu_once_started(home: Path, frozen: list):
    """A task that SIGSTOPs the instance's QEMU once metadata says the guest was started
    (QMP `cont` answered: Initializing) and records (pid, state) once /proc shows it
    stopped.  Not waiting for Running keeps the test independent of the boot's speed."""
    import trio

    async def freeze():
        with trio.fail_after(240):
            while not any(json.loads(p.read_text()).get("state") in ("Initializing", "Running")
                          for p in home.glob("instances/*/metadata.json")):
                await trio.sleep(0.1)       # polls metadata (there is no event to wait on)
            (pid,) = qemu_pids_using(home)
            os.kill(pid, signal.SIGSTOP)
            while proc_state(pid) != "T":
                await trio.sleep(0.01)
            frozen.append((pid, proc_state(pid)))
    return freeze


def record_stops_and_signals(monkeypatch) -> tuple[list, list]:
    """How each vmm.stop ended, and every signal it sent through a pidfd."""
    stops, sent = [], []
    real_stop, real_send = vmm.stop, signal.pidfd_send_signal

    async def stop(instance, *, graceful):
        stops.append(await real_stop(instance, graceful=graceful))
        return stops[-1]

    def send(pidfd, signum, *args):
        sent.append(signal.Signals(signum))
        return real_send(pidfd, signum, *args)
    monkeypatch.setattr(vmm, "stop", stop)
    monkeypatch.setattr(signal, "pidfd_send_signal", send)
    return stops, sent


def test_frozen_qemu_is_killed(home, monkeypatch, capsys):
    """QEMU frozen by SIGSTOP (during the boot) answers neither QMP quit nor SIGTERM:
    at the timeout kindling escalates to SIGKILL and leaves nothing behind."""
    import trio
    monkeypatch.setattr(vmm, "QMP_TIMEOUT", 1.0)
    monkeypatch.setattr(vmm, "TERM_GRACE", 0.5)
    frozen = []
    stops, sent = record_stops_and_signals(monkeypatch)
    real_run = runner.run_async

    async def run_and_freeze(opts, home_=None, emit=None):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(freeze_qemu_once_started(home, frozen))
            result = await real_run(opts, home_, emit)
            nursery.cancel_scope.cancel()
        return result

    monkeypatch.setattr(runner, "run", lambda opts, home_=None, emit=None: trio.run(
        run_and_freeze, opts, home_, emit))
    code = _in_process_run(monkeypatch, home, "--timeout", "20", "--", "sh", "-c",
                           "echo up; sleep 1000")
    err = capsys.readouterr().err
    assert code == 125, err
    assert "kindling: error: timed out after 20 s" in err
    assert [state for _, state in frozen] == ["T"], err     # the freeze really happened
    assert sent == [signal.SIGTERM, signal.SIGKILL]         # SIGTERM stayed pending: escalated
    assert stops[0] == "killed", stops
    nothing_left(home)
