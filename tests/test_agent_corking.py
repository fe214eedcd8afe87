"""An exec's frames and the writes that carry them (agent/mux.py corking, agent/execs.py):
a short command costs the agent one write; a long one gets `started` and its output before
it ends, and its eofs and exit in one write.  Agent in-process on memory streams."""

import pytest
import trio
import trio.testing

from agent import wire
from agent.server import Agent
from host_shim.agent_client import open_agent_stream


class RecordingStream(trio.abc.Stream):
    """The agent's end of the connection, keeping every send_all()'s bytes."""

    def __init__(self, inner):
        self.inner = inner
        self.writes = []

    async def send_all(self, data):
        self.writes.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self):
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None):
        return await self.inner.receive_some(max_bytes)

    async def aclose(self):
        await self.inner.aclose()


def frames_of(write):
    """[(type, sid, third element)] of one write (whole frames: the mux never splits one)."""
    decoder = wire.Decoder(wire.CLIENT_LIMITS)
    decoder.feed(wire.MAGIC + write)
    out = []
    while (msg := decoder.next()) is not None:
        if msg is not wire.RESET:
            out.append((msg[0], msg[1], msg[2] if len(msg) > 2 else None))
    assert decoder.buffered == 0, "a write ended in the middle of a frame"
    return out


def session_writes(writes, sid):
    """The writes that carry frames of session `sid`, each as its list of frame types."""
    per_write = [[typ for typ, s, _ in frames_of(w) if s == sid] for w in writes]
    return [types for types in per_write if types]


@pytest.fixture
async def recorded(nursery):
    client, server = trio.testing.memory_stream_pair()
    recording = RecordingStream(server)
    nursery.start_soon(Agent().serve_stream, recording)
    return client, recording


async def test_a_short_exec_is_one_write(recorded):
    client, recording = recorded
    with trio.fail_after(20):
        async with open_agent_stream(client, timeout=5) as agent:
            result = await agent.exec(["sh", "-c", "echo hi"])
    assert (result.code, result.stdout) == (0, b"hi\n")
    assert session_writes(recording.writes, 1) == [["started", "data", "eof", "eof", "exit"]]


async def test_a_long_exec_gets_started_and_output_early_and_one_write_at_the_end(recorded):
    client, recording = recorded
    with trio.fail_after(30):
        async with open_agent_stream(client, timeout=5) as agent:
            async with agent.open_exec(["sh", "-c", "echo hi; read line"], stdin=True) as proc:
                assert await proc.receive("out") == b"hi\n"     # not held back until the end
                await proc.send_stdin(b"go\n")
                await proc.close_stdin()
                result = await proc.wait()
    assert result.code == 0
    writes = session_writes(recording.writes, 1)
    assert writes[0][0] == "started" and "exit" not in writes[0]
    assert writes[-1] == ["eof", "eof", "exit"]
