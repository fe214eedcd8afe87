"""Boot timeline: the one way a boot stage is timed, named and failed.

`with Stage("rootfs"): ...` marks the stage current for the calling thread (a
KINDLING-FATAL line names it), prints a KINDLING-STAGE line with its start and
end when it ends, and turns any error raised in it into a `BootFailed` naming
it.  A stage that began before its code ran (a helper launched earlier, the
kernel) moves its `start`; `finish(end)` prints a stage measured elsewhere.
`line=False` names a stage for FATAL lines without printing it (the program,
whose duration is not the boot's).

Times are the guest's CLOCK_MONOTONIC in seconds, which starts near zero when
the kernel starts, so the host can lay the stages of one boot on one axis.

Where the lines go: to the control port (initsys/control.py), which only Kindling's
host attaches and reads, and to the serial console only when the host asks: with the
kernel argument `kindling_timeline=1` (Kindling's host sets it when it boots an
initrd without the control port: `create --initrd`), and, with `kindling_control=1`,
until the control port is open (the first stages: Kindling's early-boot watchdog,
host_shim/watchdog.py, takes them as PID 1's first sign of life, as early as ever).
A hypeman host asks for neither: its console, and so its users' logs, carries the
protocol's markers and the program's output, not ~15 stage lines per boot (hypeman
filters only HYPEMAN-* lines).
"""

import os
import threading
import time

from initsys import console, control, protocol

CONSOLE_ARG = "kindling_timeline"
from initsys.failure import BootFailed

_where = threading.local()


def current():
    """The stage the calling thread is in ('init' before the first)."""
    return getattr(_where, "stage", "init")


class Stage:
    """One named boot stage (a context manager; see the module docstring)."""

    def __init__(self, name, start=None, line=True):
        self.name = name
        self.start = start
        self.end = None
        self.line = line
        self._outer = None

    def __enter__(self):
        self._outer = (current(), getattr(_where, "obj", None))
        _where.stage, _where.obj = self.name, self
        if self.start is None:
            self.start = time.monotonic()
        return self

    def __exit__(self, exc_type, exc, tb):
        _where.stage, _where.obj = self._outer
        if exc is None:
            if self.line:
                self.finish(time.monotonic() if self.end is None else self.end)
            return False
        if isinstance(exc, Exception) and not isinstance(exc, BootFailed):  # groups too
            raise BootFailed(self.name, exc) from exc
        return False

    def finish(self, end):
        """Print the KINDLING-STAGE line, ending at `end`."""
        self.end = end
        line = protocol.stage_line(self.name, self.start, end)
        if on_console() or control.awaited():
            console.emit(line)
        else:
            control.write(line)


def ran_elsewhere(start, end):
    """The calling thread's stage was done by another thread, from `start` to `end` (the
    module closure, started by /init: initsys/preload.py); its line says so."""
    stage = _where.obj
    stage.start, stage.end = start, end


def on_console(environ=os.environ):
    """The host asked for the stage lines on the console: `kindling_timeline=1`."""
    return environ.get(CONSOLE_ARG) == "1"
