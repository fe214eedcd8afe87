"""host_shim/vmm.py and the detached-process helpers of host_shim/run.py, on a real QEMU.

A real `qemu-system-x86_64 -machine none` (no guest, starts in ~50 ms) is enough
to exercise everything the shim asks of the VMM: the pidfile lock, QMP run
states (prelaunch, running, paused), launch failures, and every step of stopping
-- including a QEMU that cannot answer at all (SIGSTOPped), which is how the
Unknown state and the SIGKILL escalation are produced without a fake VMM.
"""

import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import trio

from host_shim import qmp, vmm
from host_shim import run as run_mod
from host_shim.errors import KindlingError
from host_shim.instance import Instance
from host_shim.state import Vmm

QEMU = "qemu-system-x86_64"


def bare_qemu_argv(instance: Instance, *extra: str) -> list[str]:
    assert shutil.which(QEMU), f"{QEMU} not found: run `make test` (it installs qemu-system-x86)"
    return [QEMU, "-machine", "none", "-nodefaults", "-no-user-config", "-display", "none",
            "-chardev", f"socket,id=qmp,path={instance.qmp_socket},server=on,wait=off",
            "-mon", "chardev=qmp,mode=control",
            "-chardev", f"file,id=con,path={instance.app_log},append=on",
            "-pidfile", str(instance.pidfile), "-S", *extra]


@pytest.fixture
def instance():
    home = Path(tempfile.mkdtemp(prefix="kv-"))
    inst = Instance.create(home)
    yield inst
    pid = vmm.pid_of(inst)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(home, ignore_errors=True)


async def test_launch_probe_and_quit(instance):
    with trio.fail_after(30):
        pid = await vmm.launch(instance, bare_qemu_argv(instance))
        assert vmm.pid_of(instance) == pid
        assert int(instance.pidfile.read_text()) == pid
        assert run_mod.is_our_child(pid)
        assert (await vmm.probe(instance)).vmm is Vmm.CREATED
        await vmm.cont(instance)
        probe = await vmm.probe(instance)
        assert (probe.vmm, probe.pid, probe.qmp_status) == (Vmm.RUNNING, pid, "running")
        await qmp.execute(instance.qmp_socket, "stop")
        assert (await vmm.probe(instance)).vmm is Vmm.PAUSED
        assert await vmm.stop(instance, graceful=0) == "quit"
    assert vmm.pid_of(instance) is None
    assert (await vmm.probe(instance)).vmm is Vmm.ABSENT
    assert run_mod.reap_detached(pid) == 0
    assert await vmm.stop(instance, graceful=0) is None       # nothing left to stop


async def test_killed_qemu_leaves_a_stale_pidfile_that_does_not_count(instance):
    with trio.fail_after(30):
        pid = await vmm.launch(instance, bare_qemu_argv(instance))
        os.kill(pid, signal.SIGKILL)
        assert await run_mod.wait_detached(pid) == -signal.SIGKILL
    assert instance.pidfile.exists()                  # QEMU had no chance to remove it
    assert vmm.pid_of(instance) is None
    assert (await vmm.probe(instance)).vmm is Vmm.ABSENT


async def test_graceful_stop_waits_then_quits(instance):
    """`-machine none` has nothing to act on an ACPI power-down: the grace period
    passes, then QMP quit ends it."""
    with trio.fail_after(30):
        await vmm.launch(instance, bare_qemu_argv(instance))
        await vmm.cont(instance)
        start = trio.current_time()
        assert await vmm.stop(instance, graceful=0.5) == "quit"
        assert trio.current_time() - start >= 0.5


async def test_frozen_qemu_is_unknown_then_killed(instance, monkeypatch):
    """A SIGSTOPped QEMU holds its pidfile lock but answers nothing: Unknown, and stop
    has to go all the way to SIGKILL (SIGTERM stays pending on a stopped process)."""
    monkeypatch.setattr(vmm, "QMP_TIMEOUT", 0.5)
    monkeypatch.setattr(vmm, "QUIT_GRACE", 0.2)
    monkeypatch.setattr(vmm, "TERM_GRACE", 0.3)
    with trio.fail_after(30):
        pid = await vmm.launch(instance, bare_qemu_argv(instance))
        os.kill(pid, signal.SIGSTOP)
        probe = await vmm.probe(instance)
        assert probe.vmm is Vmm.UNREACHABLE and probe.pid == pid
        assert f"QEMU (pid {pid}) did not answer QMP query-status within 0.5 s" == probe.error
        assert await vmm.stop(instance, graceful=0.2) == "killed"
        assert await run_mod.wait_detached(pid) == -signal.SIGKILL


async def test_qemu_that_fails_to_start_is_reported_with_its_message(instance):
    argv = bare_qemu_argv(instance, "-drive", "file=/nonexistent/disk.img,if=none,id=d0")
    with trio.fail_after(30), pytest.raises(KindlingError) as info:
        await vmm.launch(instance, argv)
    assert info.value.message == "QEMU failed to start (exit code 1)"
    assert "Could not open '/nonexistent/disk.img'" in info.value.hint
    assert "Could not open" in instance.vmm_log.read_text()


async def test_launch_of_a_missing_binary(instance):
    with pytest.raises(KindlingError, match="/nonexistent/qemu: not found"):
        await vmm.launch(instance, ["/nonexistent/qemu"])


async def test_spawned_process_is_detached():
    """Own session, stdin /dev/null, default SIGPIPE/SIGINT even though Python ignores
    or handles them."""
    with tempfile.TemporaryFile() as out:
        pid = run_mod.spawn_detached(
            ["sh", "-c", "echo sid=$(cut -d' ' -f6 /proc/$$/stat) pid=$$; "
             "grep -E '^(SigIgn)' /proc/$$/status; cat"], stdout=out.fileno(),
            stderr=out.fileno())
        with trio.fail_after(10):
            assert await run_mod.wait_detached(pid) == 0
        out.seek(0)
        text = out.read().decode()
    assert f"sid={pid} pid={pid}" in text          # session leader: its own session
    ignored = int(text.split("SigIgn:")[1].split()[0], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)) and not ignored & (1 << (signal.SIGINT - 1))


async def test_waiting_for_a_stranger_gives_no_status():
    assert run_mod.reap_detached(os.getpid()) is None      # not our detached child
    stranger = await trio.lowlevel.open_process(["true"])  # a child, but not a detached one
    await stranger.wait()
    assert await run_mod.wait_detached(stranger.pid) is None
