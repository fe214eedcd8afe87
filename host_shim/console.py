"""The guest's serial console: follow the log QEMU writes, and sort its lines.

Two separate parts:

* `LineSplitter` + `follow()`: turn the growing console log into lines.  QEMU
  appends to the file itself, so we poll it for new bytes (~20 ms; host side
  only).  inotify would save a few wake-ups but adds a dependency and a second
  code path for the final drain; the poll is cheap and bounded.
* `classify()`: a pure function deciding where a line is shown.  Sentinel lines
  (HYPEMAN-*, KINDLING-STAGE, KINDLING-FATAL) are never shown as program output.
"""

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass

import trio

from initsys import protocol
from initsys.protocol import Marker

POLL_INTERVAL = 0.02
_READ_SIZE = 1 << 16


class LineSplitter:
    """Bytes in, complete lines out (UTF-8 with replacement; a trailing `\\r` is stripped)."""

    def __init__(self):
        self._partial = b""

    def feed(self, data: bytes) -> list[str]:
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [_decode(line) for line in lines]

    def flush(self) -> list[str]:
        """The unterminated last line, if any (call once the log is complete)."""
        rest, self._partial = self._partial, b""
        return [_decode(rest)] if rest else []


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").rstrip("\r")


async def follow(path: str | os.PathLike, on_line: Callable[[str], None], *,
                 done: trio.Event, on_data: Callable[[], None] | None = None,
                 interval: float = POLL_INTERVAL) -> None:
    """Feed every line of the log at `path` to `on_line`, as it grows, until `done` is set.

    The file may not exist yet.  After `done` is set the rest of the file is read
    and a final unterminated line is delivered, so nothing written before `done`
    is lost.  `on_data` is called whenever new bytes arrive.
    """
    splitter = LineSplitter()
    f = None
    try:
        while True:
            finished = done.is_set()   # decided before reading: the reads below see everything
            if f is None:
                try:
                    f = open(path, "rb", buffering=0)
                except FileNotFoundError:
                    pass
            data = f.read(_READ_SIZE) if f is not None else b""
            if data:
                if on_data is not None:
                    on_data()
                for line in splitter.feed(data):
                    on_line(line)
                await trio.lowlevel.checkpoint()
                continue
            if finished:
                for line in splitter.flush():
                    on_line(line)
                return
            with trio.move_on_after(interval):
                await done.wait()
    finally:
        if f is not None:
            f.close()


# --- classification ----------------------------------------------------------

class Phase(enum.StrEnum):
    BOOT = "boot"          # before HYPEMAN-PROGRAM-START
    PROGRAM = "program"    # between PROGRAM-START and EXIT
    SHUTDOWN = "shutdown"  # after HYPEMAN-EXIT


class Stream(enum.StrEnum):
    PROGRAM = "program"    # the program's output: stdout
    BOOT = "boot"          # kernel / init / power-off chatter: stderr with --verbose


@dataclass(frozen=True)
class Classified:
    marker: Marker | None     # the sentinel on this line, if any
    stream: Stream | None     # where to show `text`; None: show nothing
    text: str                 # what to show (a sentinel line shows only its prefix)
    phase: Phase              # the phase after this line


def _sentinel_pos(line: str) -> int:
    positions = [p for p in (line.find(s + " ") for s in protocol.SENTINELS) if p >= 0]
    return min(positions) if positions else -1


def next_phase(phase: Phase, marker: Marker | None) -> Phase:
    if marker is None:
        return phase
    if marker.kind == protocol.PROGRAM_START and phase is Phase.BOOT:
        return Phase.PROGRAM
    if marker.kind in (protocol.EXIT, protocol.FATAL):
        return Phase.SHUTDOWN
    return phase


def _stream(phase: Phase) -> Stream:
    return Stream.PROGRAM if phase is Phase.PROGRAM else Stream.BOOT


def classify(line: str, phase: Phase) -> Classified:
    """Where a console line goes, given the phase it was seen in.

    A sentinel may have text before it on the same line: a logger prefix, or the
    program's last output when it did not end with a newline.  That text is
    kept and shown in the phase the line arrived in; the sentinel never is.
    """
    line = line.rstrip("\r")
    marker = protocol.parse_line(line)
    if marker is None:
        return Classified(None, _stream(phase), line, phase)
    prefix = line[:_sentinel_pos(line)].rstrip()
    return Classified(marker, _stream(phase) if prefix else None, prefix,
                      next_phase(phase, marker))
