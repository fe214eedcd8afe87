"""host_shim/console.py: splitting the console log into lines and sorting them for display."""

import pytest

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


@pytest.mark.parametrize("line, shown", [
    ("hello", "hello"),
    ("hello\r", "hello"),
    ("", ""),
    (START, None),
    (STAGE + "\r", None),
    ("   " + EXIT, None),
    ("no newline at end" + EXIT, "no newline at end"),
    ("[    1.5] init: " + STAGE, "[    1.5] init:"),
])
def test_user_text_filters_sentinels(line, shown):
    """What `kindling logs` shows: never a sentinel, always the text before one."""
    assert console.user_text(line) == shown


def test_find_sentinel_position():
    assert protocol.find_sentinel("abc " + EXIT) == (4, protocol.parse_line(EXIT))
    assert protocol.find_sentinel("plain") is None
