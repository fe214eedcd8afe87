"""The guest's serial console: its bytes as lines, and where each line is shown.

* `LineSplitter`: bytes in, complete lines out.  Following the log file itself
  (QEMU appends to it; it is rotated) is host_shim/logfiles.py's job.
* `classify()`: a pure function deciding where a line is shown.  Sentinel lines
  (HYPEMAN-*, KINDLING-STAGE, KINDLING-FATAL) are never shown as program output.
"""

import enum
from dataclasses import dataclass

from initsys import protocol
from initsys.protocol import Marker


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


def as_text(line: str, phase: Phase) -> Classified:
    """A line shown as text even if it looks like a sentinel (host_shim/control.py
    found it is not one of PID 1's)."""
    return Classified(None, _stream(phase), line.rstrip("\r"), phase)


def classify(line: str, phase: Phase) -> Classified:
    """Where a console line goes, given the phase it was seen in.

    A sentinel may have text before it on the same line: a logger prefix, or the
    program's last output when it did not end with a newline.  That text is
    kept and shown in the phase the line arrived in; the sentinel never is.
    """
    line = line.rstrip("\r")
    found = protocol.find_sentinel(line)
    if found is None:
        return Classified(None, _stream(phase), line, phase)
    pos, marker = found
    prefix = line[:pos].rstrip()
    return Classified(marker, _stream(phase) if prefix else None, prefix,
                      next_phase(phase, marker))


def user_text(line: str) -> str | None:
    """A console line as `kindling logs` shows it: sentinels removed (the text before a
    sentinel on the same line is kept), None when nothing is left to show."""
    line = line.rstrip("\r")
    found = protocol.find_sentinel(line)
    if found is None:
        return line
    prefix = line[:found[0]].rstrip()
    return prefix or None
