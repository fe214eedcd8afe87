"""host_shim.guest_sync.after_restore and an exec whose VM goes away, without a VM: an
in-process agent (its system calls replaced) serves the instance's agent socket."""

import shutil
import socket
import tempfile
import types
from pathlib import Path

import pytest
import trio

from agent import sync
from agent.server import Agent
from host_shim import agent_ops, guest_sync
from host_shim.errors import KindlingError
from host_shim.instance import Instance
from host_shim.state import State


@pytest.fixture
def instance():
    path = Path(tempfile.mkdtemp(prefix="kgs-", dir="/tmp"))     # sun_path is 108 bytes
    yield Instance(id="i-sync", dir=path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def synced(monkeypatch):
    """sync.apply replaced by a recorder: the host's clock and RNG are never touched."""
    calls = []
    monkeypatch.setattr(sync, "apply", lambda time_ns, info: calls.append((time_ns, bytes(info))) or 42)
    return calls


async def serve(path, handler, *, task_status=trio.TASK_STATUS_IGNORED):
    """Accept connections on the unix socket `path`; handler(stream) for each."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen()
    await trio.serve_listeners(handler, [trio.SocketListener(sock)], task_status=task_status)


async def test_after_restore_syncs_64_bytes_and_the_clock(instance, synced):
    agent = Agent(base_env={})
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, instance.agent_socket, agent.serve_stream)
            t0 = trio.current_time()
            result = await guest_sync.after_restore(instance)
            nursery.cancel_scope.cancel()
    assert trio.current_time() - t0 < 5
    assert (result.entropy_bytes, result.entropy_bits, result.reseeded, result.clock_step_ns) == (64, 512, True, 42)
    [(_, info)] = synced
    assert len(info) == 8 + guest_sync.SYNC_ENTROPY


async def test_no_agent_socket(instance):
    with pytest.raises(KindlingError) as info:
        await guest_sync.after_restore(instance)
    assert "instance i-sync" in str(info.value) and "has no agent socket" in str(info.value)
    assert str(instance.agent_socket) in str(info.value)


async def test_agent_that_never_answers(instance):
    async def silent(stream):
        await trio.sleep_forever()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, instance.agent_socket, silent)
            with pytest.raises(KindlingError) as info:
                await guest_sync.after_restore(instance, timeout=1.5)
            nursery.cancel_scope.cancel()
    text = str(info.value)
    assert "syncing the guest's clock and RNG" in text and "1.5 s" in text


async def _refused_by(instance, agent):
    """after_restore against `agent` serving the instance's socket: the KindlingError's info."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, instance.agent_socket, agent.serve_stream)
            with pytest.raises(KindlingError) as info:
                await guest_sync.after_restore(instance)
            nursery.cancel_scope.cancel()
    return info


async def test_agent_without_sync(instance, synced):
    agent = Agent(base_env={})
    del agent.ops["sync"]           # an agent older than the operation
    info = await _refused_by(instance, agent)
    assert "syncing the guest's clock and RNG failed" in str(info.value)
    assert "unknown operation 'sync'" in str(info.value)
    assert synced == []


async def test_agent_refusing_the_clock(instance, monkeypatch):
    def denied(time_ns, info):
        raise PermissionError(1, "Operation not permitted (needs CAP_SYS_TIME)", "clock_settime(CLOCK_REALTIME)")

    monkeypatch.setattr(sync, "apply", denied)
    agent = Agent(base_env={})
    info = await _refused_by(instance, agent)
    assert "clock_settime(CLOCK_REALTIME): Operation not permitted (needs CAP_SYS_TIME)" in str(info.value)


async def test_exec_whose_vm_goes_away(instance, monkeypatch):
    """QEMU ending (standby after the snapshot, or stop) closes the agent socket under a
    running exec: the host gets a clear error, and a new connection works."""
    async def running(ref, operation, home=None, started=None):
        return instance

    monkeypatch.setattr(agent_ops, "_running", running)

    async def standby(instance):    # no VM behind this instance: what a standby leaves
        return types.SimpleNamespace(name="i-sync", state=State.STANDBY)

    monkeypatch.setattr(agent_ops.lifecycle, "observe", standby)
    agent = Agent(base_env={})
    vm_gone = trio.CancelScope()
    first = True

    async def connection(stream):
        nonlocal first
        if first:
            first = False
            with vm_gone:
                await agent.serve_stream(stream)
            await stream.aclose()           # as QEMU's socket does when QEMU ends
        else:
            await agent.serve_stream(stream)

    async def on_output(data):
        vm_gone.cancel()                # the command runs: the VM goes away now

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, instance.agent_socket, connection)
            with pytest.raises(KindlingError) as info:
                await agent_ops.run_exec("i-sync", ["sh", "-c", "echo up; exec sleep 60"],
                                         stdout=on_output)
            after = await agent_ops.run_exec("i-sync", ["echo", "again"])
            nursery.cancel_scope.cancel()
    assert "connection to the agent lost: the peer disconnected" in str(info.value)
    assert "the instance stopped running while the session was open (instance i-sync is now Standby)" \
        in str(info.value)
    assert after.code == 0 and after.stdout == b"again\n"
