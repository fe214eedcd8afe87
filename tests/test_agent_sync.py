"""The agent's `sync` operation (agent/sync.py) without a VM: the request's checks, the
ioctl numbers and struct, the reply, and errors of the system calls as error frames.

The system calls themselves (clock_settime, the two ioctls) need root in a guest; they
are replaced by a recorder here and run for real in tests/test_vm_guest_sync.py.
"""

import errno
import struct
import time

import pytest
import trio
import trio.testing

from agent import sync
from agent.server import Agent
from host_shim.agent_client import AgentError, RemoteError, open_agent_stream


@pytest.fixture
def calls(monkeypatch):
    """apply() replaced: records (time_ns, pool_info), answers a 5 s clock step."""
    recorded = []

    def fake_apply(time_ns, pool_info):
        recorded.append((time_ns, bytes(pool_info)))
        return 5_000_000_000

    monkeypatch.setattr(sync, "apply", fake_apply)
    return recorded


async def with_agent(fn):
    """fn(client) against an in-process agent over a memory stream; an AgentError it
    raises is raised here (outside the nurseries, so not in an ExceptionGroup)."""
    host, guest = trio.testing.memory_stream_pair()
    agent = Agent(base_env={})
    outcome = {}
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.serve_stream, guest)
            async with open_agent_stream(host, timeout=5) as client:
                try:
                    outcome["value"] = await fn(client)
                except AgentError as e:
                    outcome["error"] = e
            nursery.cancel_scope.cancel()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_ioctl_numbers_match_linux_uapi():
    # _IOW('R', 0x03, int[2]) and _IO('R', 0x07) on x86_64, as strace prints them
    assert sync.RNDADDENTROPY == 0x40085203
    assert sync.RNDRESEEDCRNG == 0x5207


def test_rand_pool_info_layout():
    info = sync.rand_pool_info(b"\x01" * 64)
    assert isinstance(info, bytearray)      # passed to the kernel as is, no 1024-byte copy
    assert struct.unpack("ii", info[:8]) == (512, 64)   # entropy_count in bits, buf_size in bytes
    assert info[8:] == b"\x01" * 64


async def test_sync_reply_and_what_reaches_the_syscalls(calls):
    entropy = bytes(range(64))
    before = time.time_ns()
    result = await with_agent(lambda client: client.sync(entropy))
    after = time.time_ns()
    assert result.clock_step_ns == 5_000_000_000
    assert (result.entropy_bytes, result.entropy_bits, result.reseeded) == (64, 512, True)
    [(time_ns, pool_info)] = calls
    assert before <= time_ns <= after           # the host's time, read as the request was built
    assert pool_info == sync.rand_pool_info(entropy)


@pytest.mark.parametrize("body, field, text", [
    ({"entropy": b"x" * 64}, "time_ns", "sync.time_ns: required"),
    ({"time_ns": "now", "entropy": b"x" * 64}, "time_ns", "expected an integer"),
    ({"time_ns": 5, "entropy": b"x" * 64}, "time_ns", "between 2000 and 2100"),
    ({"time_ns": 1_800_000_000 * 10**9}, "entropy", "sync.entropy: required"),
    ({"time_ns": 1_800_000_000 * 10**9, "entropy": "text"}, "entropy", "expected bytes"),
    ({"time_ns": 1_800_000_000 * 10**9, "entropy": b"x" * 8}, "entropy", "8 bytes, expected 16..512"),
    ({"time_ns": 1_800_000_000 * 10**9, "entropy": b"x" * 513}, "entropy", "513 bytes"),
])
async def test_bad_requests_are_refused_before_any_syscall(calls, body, field, text):
    async def send(client):
        session = await client._open({"op": "sync", **body})
        return await client._terminal(session, "sync")

    with pytest.raises(RemoteError) as info:
        await with_agent(send)
    assert info.value.code == "invalid" and text in str(info.value)
    assert calls == []


async def test_syscall_failure_is_an_error_frame_naming_the_call(monkeypatch):
    def denied(time_ns, pool_info):
        raise OSError(errno.EPERM, "Operation not permitted (needs CAP_SYS_TIME)",
                      "clock_settime(CLOCK_REALTIME)")

    monkeypatch.setattr(sync, "apply", denied)
    with pytest.raises(RemoteError) as info:
        await with_agent(lambda client: client.sync(b"e" * 64))
    assert info.value.code == "permission"
    assert "clock_settime(CLOCK_REALTIME): Operation not permitted (needs CAP_SYS_TIME)" in str(info.value)


@pytest.fixture
def kernel(monkeypatch, tmp_path):
    """The kernel calls apply() makes, recorded: the host's clock and RNG are never touched
    (the test machine runs as root with CAP_SYS_TIME)."""
    log = []
    device = tmp_path / "urandom"
    device.write_bytes(b"")
    monkeypatch.setattr(sync, "RANDOM_DEVICE", str(device))
    monkeypatch.setattr(sync.time, "clock_gettime_ns", lambda clock: 1_000)
    monkeypatch.setattr(sync.time, "clock_settime_ns", lambda clock, ns: log.append(("settime", clock, ns)))
    monkeypatch.setattr(sync.fcntl, "ioctl", lambda fd, request, arg: log.append(("ioctl", request, bytes(arg)
                                                                                 if arg else arg)))
    return log


def test_apply_steps_the_clock_then_credits_then_reseeds(kernel):
    info = sync.rand_pool_info(b"z" * 32)
    assert sync.apply(1_000 + 7_000_000_000, info) == 7_000_000_000
    assert kernel == [("settime", time.CLOCK_REALTIME, 7_000_001_000),
                      ("ioctl", sync.RNDADDENTROPY, bytes(info)),
                      ("ioctl", sync.RNDRESEEDCRNG, 0)]


@pytest.mark.parametrize("failing, name, needs", [
    ("settime", "clock_settime(CLOCK_REALTIME)", "CAP_SYS_TIME"),
    (sync.RNDADDENTROPY, "ioctl RNDADDENTROPY on", "CAP_SYS_ADMIN"),
    (sync.RNDRESEEDCRNG, "ioctl RNDRESEEDCRNG on", "CAP_SYS_ADMIN"),
])
def test_apply_names_the_call_that_failed(kernel, monkeypatch, failing, name, needs):
    def deny(*args):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    if failing == "settime":
        monkeypatch.setattr(sync.time, "clock_settime_ns", deny)
    else:
        monkeypatch.setattr(sync.fcntl, "ioctl",
                            lambda fd, request, arg: deny() if request == failing else None)
    with pytest.raises(OSError) as info:
        sync.apply(2_000, sync.rand_pool_info(b"x" * 16))
    assert info.value.errno == errno.EPERM
    assert info.value.filename.startswith(name) and needs in info.value.strerror


def test_apply_without_the_random_device(kernel, monkeypatch, tmp_path):
    monkeypatch.setattr(sync, "RANDOM_DEVICE", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError) as info:
        sync.apply(2_000, sync.rand_pool_info(b"x" * 16))
    assert info.value.filename == str(tmp_path / "missing")


def test_hello_announces_sync():
    from agent import wire
    assert "sync" in wire.agent_hello(b"n" * 16, ops=Agent(base_env={}).ops)[2]["ops"]


def test_the_systemd_unit_keeps_the_capabilities_sync_needs():
    """In systemd mode the agent runs from systemd_units/kindling-agent.service: as root, with
    CAP_SYS_TIME (clock_settime) and CAP_SYS_ADMIN (the ioctls).  Any of these settings would
    take one away (ProtectClock= drops CAP_SYS_TIME; ProtectKernelTunables= and friends)."""
    from pathlib import Path

    import systemd_units
    unit = (Path(systemd_units.UNIT_DIR) / "kindling-agent.service").read_text()
    settings = {line.split("=", 1)[0].strip() for line in unit.splitlines()
                if "=" in line and not line.lstrip().startswith("#")}
    taking = {"User", "DynamicUser", "CapabilityBoundingSet", "AmbientCapabilities", "ProtectClock",
              "PrivateDevices", "SystemCallFilter", "PrivateUsers", "DevicePolicy", "DeviceAllow"}
    assert settings & taking == set()
    assert "ExecStart" in settings
