"""host_shim/console.py: splitting the console log into lines and sorting them for display."""

import pytest
import trio

from host_shim import console
from host_shim.console import Phase, Stream
from initsys import protocol

BOOT, PROGRAM, SHUTDOWN = Phase.BOOT, Phase.PROGRAM, Phase.SHUTDOWN
START = "HYPEMAN-PROGRAM-START ts=2026-03-08T15:09:26.123456789Z mode=exec"
EXIT = 'HYPEMAN-EXIT code=0 message="success"'
FATAL = 'KINDLING-FATAL stage=config error="no config"'
STAGE = "KINDLING-STAGE name=kernel start=0.000000 end=0.912000"
READY = "HYPEMAN-AGENT-READY ts=2026-03-08T15:09:26.123456789Z"

CASES = [
    # (line, phase, expected stream, expected text, next phase)
    ("[    0.912] Run /init as init process", BOOT, Stream.BOOT, "[    0.912] Run /init as init process", BOOT),
    ("hello", PROGRAM, Stream.PROGRAM, "hello", PROGRAM),
    ("hello\r", PROGRAM, Stream.PROGRAM, "hello", PROGRAM),
    ("a\rb", PROGRAM, Stream.PROGRAM, "a\rb", PROGRAM),          # only a trailing \r goes
    ("", PROGRAM, Stream.PROGRAM, "", PROGRAM),                  # empty program lines are output
    ("reboot: Power down", SHUTDOWN, Stream.BOOT, "reboot: Power down", SHUTDOWN),
    (START, BOOT, None, "", PROGRAM),
    (START + "\r", BOOT, None, "", PROGRAM),
    (STAGE, BOOT, None, "", BOOT),
    (STAGE, PROGRAM, None, "", PROGRAM),
    (READY, PROGRAM, None, "", PROGRAM),
    (FATAL, BOOT, None, "", SHUTDOWN),
    (EXIT, PROGRAM, None, "", SHUTDOWN),
    (EXIT + "\r", PROGRAM, None, "", SHUTDOWN),
    # Text before a sentinel is kept, in the phase the line arrived in.
    ("no newline at end" + EXIT, PROGRAM, Stream.PROGRAM, "no newline at end", SHUTDOWN),
    ("[    1.5] init: " + STAGE, BOOT, Stream.BOOT, "[    1.5] init:", BOOT),
    ("init: " + START + "\r", BOOT, Stream.BOOT, "init:", PROGRAM),
    ("   " + EXIT, PROGRAM, None, "", SHUTDOWN),
    # A second PROGRAM-START (systemd re-exec, say) does not move the phase back.
    (START, SHUTDOWN, None, "", SHUTDOWN),
]


@pytest.mark.parametrize("line, phase, stream, text, after", CASES)
def test_classify(line, phase, stream, text, after):
    c = console.classify(line, phase)
    assert (c.stream, c.text, c.phase) == (stream, text, after)
    assert (c.marker is not None) == protocol.is_sentinel_line(line)


@pytest.mark.parametrize("sentinel", [START, EXIT, FATAL, STAGE, READY,
                                      "HYPEMAN-HEADERS-START ts=x", "HYPEMAN-HEADERS-READY ts=x",
                                      'HYPEMAN-HEADERS-FAILED ts=x error="e"'])
@pytest.mark.parametrize("phase", list(Phase))
def test_sentinels_never_shown_as_program_output(sentinel, phase):
    c = console.classify(sentinel, phase)
    assert c.marker is not None
    assert c.stream is None or sentinel not in c.text


def test_splitter_joins_partial_lines_and_strips_cr():
    s = console.LineSplitter()
    assert s.feed(b"he") == []
    assert s.feed(b"llo\r\nwor") == ["hello"]
    assert s.feed(b"ld\r\n\r\nlast") == ["world", ""]
    assert s.flush() == ["last"]
    assert s.flush() == []


def test_splitter_keeps_multibyte_characters_split_across_reads():
    s = console.LineSplitter()
    data = "é☺\n".encode()
    assert s.feed(data[:1]) == []
    assert s.feed(data[1:]) == ["é☺"]
    assert s.feed(b"\xff\n") == ["\ufffd"]


async def test_follow_reads_a_growing_file(tmp_path):
    log = tmp_path / "app.log"
    lines, data_calls = [], []
    done = trio.Event()

    async def writer():
        with open(log, "ab", buffering=0) as f:      # created after the follower started
            f.write(b"one\r\ntw")
            await trio.sleep(0.05)
            f.write(b"o\r\n")
            await trio.sleep(0.05)
            f.write(b"unterminated")
        done.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: console.follow(log, lines.append, done=done,
                                                      on_data=lambda: data_calls.append(1)))
            await trio.sleep(0.05)
            nursery.start_soon(writer)
    assert lines == ["one", "two", "unterminated"]
    assert data_calls


async def test_follow_returns_when_file_never_appears(tmp_path):
    done = trio.Event()
    done.set()
    lines = []
    with trio.fail_after(5):
        await console.follow(tmp_path / "missing.log", lines.append, done=done)
    assert lines == []
