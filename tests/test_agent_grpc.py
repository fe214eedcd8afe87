"""hypeman's gRPC front end (agent/grpc_front.py) against a real gRPC client (grpcio), on the
same unix socket as Kindling's own protocol, served by one real agent process."""

import os
import stat

import grpc
import pytest
import trio

from agent import guest_proto, protowire
from agentproc import agent  # noqa: F401  (fixture)
from host_shim.agent_client import open_agent

TIMEOUT = 30


# --- the message encoding, against bytes worked out by hand from the wire format -------------

def test_encoding_of_exec_start_matches_the_wire_format():
    msg = {"start": {"command": ["sh", "-c"], "tty": True, "env": {"A": "b"}, "timeout_seconds": -1}}
    raw = protowire.encode(guest_proto.EXEC_REQUEST, msg)
    start = (b"\x0a\x02sh\x0a\x02-c" + b"\x10\x01" + b"\x1a\x06\x0a\x01A\x12\x01b"
             + b"\x28" + b"\xff" * 9 + b"\x01")
    assert raw == b"\x0a" + bytes([len(start)]) + start
    assert protowire.decode(guest_proto.EXEC_REQUEST, raw) == msg


def test_a_oneof_member_is_sent_even_when_it_is_the_default():
    assert protowire.encode(guest_proto.EXEC_RESPONSE, {"exit_code": 0}) == b"\x18\x00"
    assert protowire.encode(guest_proto.EXEC_RESPONSE, {"stdout": b""}) == b"\x0a\x00"
    assert protowire.encode(guest_proto.STAT_PATH_RESPONSE, {"exists": False, "size": 0}) == b""


def test_unknown_fields_are_skipped_and_bad_ones_named():
    raw = b"\x0a\x03/tm" + b"\x78\x05" + b"\x82\x01\x01x"      # path, unknown varint 15, unknown bytes 16
    assert protowire.decode(guest_proto.STAT_PATH_REQUEST, raw) == {"path": "/tm"}
    with pytest.raises(protowire.DecodeError, match=r"request\.path: truncated"):
        protowire.decode(guest_proto.STAT_PATH_REQUEST, b"\x0a\x09/tm", "request")
    with pytest.raises(protowire.DecodeError, match=r"follow_links: expected a varint"):
        protowire.decode(guest_proto.STAT_PATH_REQUEST, b"\x12\x01x")


# --- a real gRPC client -----------------------------------------------------------------

def method(channel, name):
    req, resp, client_streams, server_streams = guest_proto.METHODS[name]
    kind = {(True, True): channel.stream_stream, (True, False): channel.stream_unary,
            (False, True): channel.unary_stream, (False, False): channel.unary_unary}
    return kind[client_streams, server_streams](
        f"/{guest_proto.SERVICE}/{name}",
        request_serializer=lambda m: protowire.encode(req, m),
        response_deserializer=lambda b: protowire.decode(resp, b))


@pytest.fixture(scope="module")
def channel(agent):  # noqa: F811
    with grpc.insecure_channel(f"unix:{agent.socket}") as ch:
        yield ch


def run_exec(channel, start, stdin=()):
    out, err, code = b"", b"", None
    for r in method(channel, "Exec")(iter([{"start": start}, *({"stdin": d} for d in stdin)]),
                                      timeout=TIMEOUT):
        out += r.get("stdout", b"")
        err += r.get("stderr", b"")
        if "exit_code" in r:
            code = r["exit_code"]
    return out, err, code


def test_exec_streams_stdout_stderr_and_the_exit_code(channel):
    out, err, code = run_exec(channel, {"command": ["sh", "-c", 'echo "$X $(pwd)"; echo e >&2; exit 7'],
                                        "env": {"X": "42"}, "cwd": "/tmp"})
    assert (out, err, code) == (b"42 /tmp\n", b"e\n", 7)


def test_exec_stdin_reaches_the_command(channel):
    out, _, code = run_exec(channel, {"command": ["cat"]}, stdin=[b"hello ", b"grpc"])
    assert (out, code) == (b"hello grpc", 0)


def test_exec_of_a_missing_command_is_127_with_the_reason(channel):
    out, err, code = run_exec(channel, {"command": ["/no/such/thing"]})
    assert code == 127 and b"command not found: /no/such/thing" in err


def test_exec_with_a_bad_cwd_is_a_grpc_error_naming_it(channel):
    with pytest.raises(grpc.RpcError) as e:
        run_exec(channel, {"command": ["true"], "cwd": "/no/such/dir"})
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "exec.cwd" in e.value.details()


def test_stat_path(channel, tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"12345")
    f.chmod(0o640)
    os.symlink("f", tmp_path / "l")
    stat_path = method(channel, "StatPath")
    assert stat_path({"path": str(f)}, timeout=TIMEOUT) == {
        "exists": True, "is_file": True, "mode": 0o640, "size": 5}
    link = stat_path({"path": str(tmp_path / "l")}, timeout=TIMEOUT)
    assert link["is_symlink"] and link["link_target"] == "f"
    assert stat_path({"path": str(tmp_path / "nope")}, timeout=TIMEOUT) == {}     # exists: false
    f.chmod(0o4750)     # permission bits only, as hypeman's agent reports them
    assert stat_path({"path": str(f)}, timeout=TIMEOUT)["mode"] == 0o750


def test_copy_to_guest_then_back(channel, tmp_path):
    dest = tmp_path / "in-guest.bin"
    data = os.urandom(200_000)
    chunks = [data[i:i + 32768] for i in range(0, len(data), 32768)]
    reqs = [{"start": {"path": str(dest), "mode": 0o600, "size": len(data), "mtime": 1_700_000_000}},
            *({"data": c} for c in chunks), {"end": {}}]
    resp = method(channel, "CopyToGuest")(iter(reqs), timeout=TIMEOUT)
    assert resp == {"success": True, "bytes_written": len(data)}
    assert dest.read_bytes() == data and stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert dest.stat().st_mtime == 1_700_000_000
    got = list(method(channel, "CopyFromGuest")({"path": str(dest)}, timeout=TIMEOUT))
    assert got[0]["header"]["path"] == "in-guest.bin" and got[0]["header"]["size"] == len(data)
    assert b"".join(m.get("data", b"") for m in got) == data
    assert got[-1] == {"end": {"final": True}}


def test_copy_to_guest_reports_failure_in_the_response(channel, tmp_path):
    resp = method(channel, "CopyToGuest")(iter([{"start": {"path": str(tmp_path / "no" / "f"), "size": 1}},
                                                {"data": b"x"}, {"end": {}}]), timeout=TIMEOUT)
    assert resp.get("success", False) is False and "destination directory" in resp["error"]


def test_copy_from_a_directory_names_entries_under_its_basename(channel, tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "x").write_bytes(b"xyz")
    got = list(method(channel, "CopyFromGuest")({"path": str(tmp_path / "d")}, timeout=TIMEOUT))
    headers = [m["header"]["path"] for m in got if "header" in m]
    assert headers == ["d", "d/sub", "d/sub/x"]
    assert got[-1] == {"end": {"final": True}}


def test_copy_from_a_missing_path_is_an_error_message(channel, tmp_path):
    got = list(method(channel, "CopyFromGuest")({"path": str(tmp_path / "gone")}, timeout=TIMEOUT))
    assert [m.get("error", {}).get("path") for m in got] == [str(tmp_path / "gone")]


def test_other_methods_are_unimplemented(channel):
    call = channel.unary_unary(f"/{guest_proto.SERVICE}/Shutdown",
                               request_serializer=bytes, response_deserializer=bytes)
    with pytest.raises(grpc.RpcError) as e:
        call(b"", timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_kindlings_protocol_on_the_same_socket(agent, channel):  # noqa: F811
    """Both front ends of one agent process, on one socket."""
    out, _, code = run_exec(channel, {"command": ["echo", "grpc"]})
    assert (out, code) == (b"grpc\n", 0)
    with trio.fail_after(TIMEOUT):
        async with open_agent(agent.socket, timeout=10) as a:
            info = await a.stat(str(agent.socket))
    assert info.exists and info.type == "socket"


async def test_no_grpc_import_without_a_way_in(tmp_path):
    """virtio-serial without the gRPC port (Kindling's default): the front end is not loaded."""
    from agent import front_ends, server, transports
    sysfs = tmp_path / "virtio-ports"
    (sysfs / "vport9p1").mkdir(parents=True)
    (sysfs / "vport9p1" / "name").write_text("org.kindling.agent.0\n")
    fronts = front_ends.FrontEnds(server.Agent(), ready_file=str(tmp_path / "grpc.ready"))
    fronts.open(sysfs=str(sysfs))
    try:
        assert fronts.grpc_port is None
        await fronts.start(transports.SerialTransport("/nonexistent"))
        assert fronts.grpc is None and not (tmp_path / "grpc.ready").exists()
        await fronts.start(transports.UnixTransport(str(tmp_path / "s")))   # a socket: both protocols
        assert fronts.grpc is not None and (tmp_path / "grpc.ready").read_text().startswith("import_ms=")
    finally:
        fronts.close()


def test_cancelling_an_exec_kills_its_command(channel):
    from agentproc import process_gone, wait_until
    call = method(channel, "Exec")(iter([{"start": {"command": ["sh", "-c", "echo $$; exec sleep 300"]}}]),
                                   timeout=TIMEOUT)
    pid = int(next(call)["stdout"])
    assert not process_gone(pid)
    call.cancel()
    wait_until(lambda: process_gone(pid), 10, f"the command (pid {pid}) killed after the call's cancel")
