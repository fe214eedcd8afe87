"""The agent protocol on memory streams: hello, sessions, flow control, errors,
disconnect and reconnect (trio.testing.memory_stream_pair, agent in-process)."""

import os

import pytest
import trio
import trio.testing

from agent import wire
from agent.mux import EOF, Mux
from agent.server import Agent
from host_shim.agent_client import AgentError, RemoteError, open_agent_stream


def gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


class RawPeer:
    """A host that speaks frames by hand, to break the rules on purpose."""

    def __init__(self, stream):
        self.stream = stream
        self.decoder = wire.Decoder(wire.CLIENT_LIMITS)

    async def send(self, msg, magic=False):
        await self.stream.send_all((wire.MAGIC if magic else b"") + wire.encode(msg))

    async def recv(self):
        while True:
            msg = self.decoder.next()
            if msg is not None:
                return msg
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.decoder.feed(data)

    async def hello(self, nonce=None, versions=(1,)):
        nonce = nonce or wire.new_nonce()
        hello = wire.client_hello(nonce)
        hello[2]["versions"] = list(versions)
        await self.send(hello, magic=True)
        while True:
            msg = await self.recv()
            if msg is None:
                raise EOFError
            if msg is not wire.RESET and msg[2].get("nonce") == nonce:
                return msg

    async def until(self, typ, sid):
        while True:
            msg = await self.recv()
            assert msg is not None, f"connection ended while waiting for {typ}"
            if msg is not wire.RESET and msg[0] == typ and msg[1] == sid:
                return msg


@pytest.fixture
async def agent_pair(nursery):
    """(agent-side serve task running, client stream)."""
    client, server = trio.testing.memory_stream_pair()
    agent = Agent()
    done = trio.Event()

    async def serve():
        try:
            await agent.serve_stream(server)
        finally:
            done.set()

    nursery.start_soon(serve)
    yield client, done


async def test_hello_stat_exec(agent_pair):
    client, _ = agent_pair
    with trio.fail_after(20):
        async with open_agent_stream(client, timeout=5) as agent:
            info = await agent.stat("/")
            assert info.exists and info.type == "dir"
            missing = await agent.stat("/no/such/path")
            assert not missing.exists
            result = await agent.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
            assert (result.code, result.stdout, result.stderr) == (3, b"out\n", b"err\n")


async def test_version_mismatch_is_an_error_frame(agent_pair):
    client, _ = agent_pair
    with trio.fail_after(10):
        peer = RawPeer(client)
        msg = await peer.hello(versions=(99,))
        assert msg[0] == "error" and msg[2]["code"] == "version" and msg[2]["versions"] == [1]
        # the connection is still usable with a good hello
        msg = await peer.hello()
        assert msg[0] == "hello" and msg[2]["version"] == 1


async def test_unknown_op_and_bad_field_are_session_errors(agent_pair):
    client, _ = agent_pair
    with trio.fail_after(10):
        peer = RawPeer(client)
        await peer.hello()
        await peer.send(["open", 1, {"op": "format-disk"}])
        err = await peer.until("error", 1)
        assert err[2]["code"] == "unsupported" and "format-disk" in err[2]["message"]
        await peer.send(["open", 2, {"op": "exec", "argv": "ls -l"}])
        err = await peer.until("error", 2)
        assert err[2]["code"] == "invalid" and "argv" in err[2]["message"]
        await peer.send(["open", 3, {"op": "exec", "argv": ["true"], "cwd": "/no/such/dir"}])
        err = await peer.until("error", 3)
        assert err[2]["field"] == "cwd"


async def test_sending_beyond_credit_is_a_protocol_error(agent_pair):
    client, _ = agent_pair
    with trio.fail_after(20):
        peer = RawPeer(client)
        hello = await peer.hello()
        window = hello[2]["window"]
        # `sleep` never reads its stdin, so the agent never returns credit
        await peer.send(["open", 1, {"op": "exec", "argv": ["sleep", "30"], "stdin": True}])
        started = await peer.until("started", 1)
        pid = started[2]["pid"]
        chunk = b"x" * (60 << 10)
        for _ in range(window // len(chunk) + 6):   # the pipe and the pump take ~2 frames
            await peer.send(["data", 1, "in", chunk])
        err = await peer.until("error", 0)
        assert err[2]["code"] == "protocol" and "flow control" in err[2]["message"]
        # the broken connection's sessions are gone: the command was killed
        while not gone(pid):
            await trio.sleep(0.01)
        # and a new hello starts over
        assert (await peer.hello())[0] == "hello"


async def test_flow_control_bounds_what_a_slow_reader_buffers():
    """A fast producer blocks once the window is used up; the receiver never holds more."""
    a, b = trio.testing.memory_stream_pair()
    window = wire.MIN_WINDOW
    sender = Mux(a, wire.Decoder(), inbound=(), window=window, peer_window=window, peer_max_frame=wire.MAX_FRAME)
    receiver = Mux(b, wire.Decoder(wire.CLIENT_LIMITS), inbound=("out",), window=window,
                   peer_window=window, peer_max_frame=wire.MAX_FRAME)
    for m in (sender, receiver):        # as after a hello
        m.decoder.feed(wire.MAGIC)
        assert m.decoder.next() is wire.RESET
    tx = sender.new_session(1)
    rx = receiver.new_session(1)
    payload = os.urandom(4 << 20)
    sent = trio.Event()

    async def produce():
        await tx.send_data("out", payload)
        await tx.send_eof("out")
        sent.set()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run)
            nursery.start_soon(receiver.run)
            nursery.start_soon(produce)
            await trio.testing.wait_all_tasks_blocked()   # the producer waits for credit
            assert not sent.is_set()
            buffered = rx._in["out"].used
            assert 0 < buffered <= window
            got = bytearray()
            while (item := await rx.receive("out")) is not EOF:
                got += item
                assert rx._in["out"].used <= window
            await sent.wait()
            nursery.cancel_scope.cancel()
    assert bytes(got) == payload


async def test_disconnect_kills_sessions_then_reconnect(nursery):
    agent = Agent()
    client, server = trio.testing.memory_stream_pair()
    first_done = trio.Event()

    async def serve(stream, done):
        await agent.serve_stream(stream)
        done.set()

    nursery.start_soon(serve, server, first_done)
    with trio.fail_after(20):
        async with open_agent_stream(client, timeout=5) as a:
            async with a.open_exec(["sh", "-c", "sleep 60 & echo $!; wait"]) as proc:
                pid = int((await proc.receive()).strip())
                await client.aclose()       # the host goes away mid-command
                with pytest.raises(AgentError, match="lost|without"):
                    await proc.wait()
        await first_done.wait()
        while not gone(pid):
            await trio.sleep(0.01)
        # the host comes back: a fresh connection works
        client2, server2 = trio.testing.memory_stream_pair()
        nursery.start_soon(serve, server2, trio.Event())
        async with open_agent_stream(client2, timeout=5) as a:
            assert (await a.exec(["echo", "again"])).stdout == b"again\n"


async def test_reconnect_without_eof_magic_resets(agent_pair):
    """virtio-serial: a new host may start talking before the agent saw the old one
    leave.  MAGIC at a frame boundary ends the old connection (its commands are
    killed) and the old connection's unread frames are skipped by the new host."""
    client, _ = agent_pair
    with trio.fail_after(20):
        old = RawPeer(client)
        await old.hello()
        await old.send(["open", 1, {"op": "exec", "argv": ["sh", "-c", "echo $$; exec sleep 60"]}])
        started = await old.until("started", 1)
        pid = started[2]["pid"]
        # the new host: same byte stream, fresh decoder, MAGIC + hello
        new = RawPeer(client)
        reply = await new.hello()
        assert reply[0] == "hello"
        while not gone(pid):
            await trio.sleep(0.01)
        await new.send(["open", 1, {"op": "stat", "path": "/"}])
        result = await new.until("result", 1)
        assert result[2]["type"] == "dir"


async def test_client_reports_a_lost_agent(agent_pair):
    client, _ = agent_pair
    with trio.fail_after(10):
        async with open_agent_stream(client, timeout=5) as a:
            a._mux.stream = client
            await a.exec(["true"])
            client.send_stream.close()
            client.receive_stream.close()
            with pytest.raises(AgentError, match="lost"):
                await a.stat("/")


async def test_hello_timeout_names_the_agent():
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(10):
        with pytest.raises(AgentError, match="did not answer the hello within 0.2 s"):
            async with open_agent_stream(client, timeout=0.2, name="agent of vm1"):
                pass


async def test_remote_error_carries_code(agent_pair):
    client, _ = agent_pair
    with trio.fail_after(10):
        async with open_agent_stream(client, timeout=5) as a:
            with pytest.raises(RemoteError) as e:
                await a.copy_from("/no/such/file", "/tmp/never-written")
            assert e.value.code == "not_found"


async def test_unanswered_hello_reconnects(nursery, monkeypatch):
    """virtio-serial: a host that died mid-frame leaves the agent expecting the rest of
    that frame; a new host's MAGIC disappears into it.  open_agent_via then drops the
    connection (the agent sees it end and starts over) and connects again."""
    from host_shim import agent_client

    monkeypatch.setattr(agent_client, "HELLO_RETRY_FIRST", 0.3)
    connects = []

    async def connect():
        client, server = trio.testing.memory_stream_pair()
        if not connects:
            # the first connection swallows everything, like a half-read frame
            async def swallow():
                while await server.receive_some(65536):
                    pass
            nursery.start_soon(swallow)
        else:
            nursery.start_soon(Agent().serve_stream, server)
        connects.append(client)
        return client

    with trio.fail_after(10):
        async with agent_client.open_agent_via(connect, timeout=5, name="vm1") as a:
            assert (await a.exec(["echo", "second try"])).stdout == b"second try\n"
    assert len(connects) == 2
