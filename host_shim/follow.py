"""Following a guest's serial console as it grows: the one loop every host-side reader
uses (`kindling wait`, `kindling logs -f`, `kindling run`).

`ConsoleFollower.next()` returns the complete lines that arrived since the last
call and the markers found in them, or, when nothing arrived, waits a short
while (or until the caller's `wake` event) and returns an empty batch, so the
caller can do its periodic work (observe the VMM, check a deadline) in between.
Reading the files themselves, across rotations, is logfiles.LogFollower's job.

Why polling: the log is a regular file that QEMU appends to (its `file`
chardev), and a regular file is always "readable" to poll/epoll, so there is
nothing to wait on in the event loop.  inotify could wake us on each write, but
the standard library has no binding and the project keeps no inotify library;
the cost of polling is one read() that returns nothing every POLL_INTERVAL
(20 ms), which is also the worst latency it adds to seeing a marker.

Markers come from one place.  Without a control channel they are parsed from
the console lines (`markers_in`).  With one (host_shim/control.py: a port only
PID 1 holds, the instance's `logs/control.log`) they come from it alone, and
the console is only shown: `Batch.control` carries the new control lines so a
reader that displays the console can tell PID 1's marker lines from program
output that looks like one (control.ConsoleGate).  If the log is complete and
the control channel stayed empty, PID 1 never opened its port (it failed
before), so no program ran and the console's markers (a FATAL) are its own.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

import trio

from initsys import protocol
from initsys.protocol import Marker

from . import control
from .instance import Instance
from .logfiles import LogFollower

POLL_INTERVAL = 0.02


def markers_in(lines: Iterable[str]) -> list[Marker]:
    """The lifecycle markers in some console lines, in order (the one marker source)."""
    return [m for m in map(protocol.parse_line, lines) if m is not None]


@dataclass
class Batch:
    lines: list[str] = field(default_factory=list)    # complete lines, oldest first
    markers: list[Marker] = field(default_factory=list)
    first_bytes: bool = False    # the log's first bytes are in this batch
    final: bool = False          # read to the end of a complete log (its last line included)
    control: list[str] | None = None   # new control-channel lines (None: no control channel)


@dataclass
class Progress:
    """How far the boot got, for messages: the last stage and marker seen."""
    lines: int = 0
    last_stage: str | None = None
    last_marker: Marker | None = None

    def add(self, batch: Batch) -> None:
        self.lines += len(batch.lines)
        for marker in batch.markers:
            self.last_marker = marker
            if marker.kind == protocol.STAGE and marker.fields.get("name"):
                self.last_stage = marker.fields["name"]

    def reset(self) -> None:
        self.lines, self.last_stage, self.last_marker = 0, None, None

    def describe(self) -> str:
        if not self.lines:
            return "the guest printed nothing on its console"
        if self.last_marker is None:
            return f"{self.lines} console lines, no boot stage or marker yet"
        marker = self.last_marker
        name = marker.kind + "".join(f" {k}={v}" for k, v in
                                     marker.fields.items() if k in ("name", "stage", "mode"))
        stage = self.last_stage or "none finished"
        return f"last boot stage: {stage}; last marker: {name}"


class ConsoleFollower:
    """One boot's serial log (or all of them: since_ns None), from its first byte."""

    def __init__(self, instance: Instance, since_ns: int | None, *,
                 progress: Progress | None = None, trusted: bool = False):
        """`trusted`: the instance has a control channel (control.enabled(meta.argv));
        its markers are then the only ones."""
        self._log = LogFollower(instance, since_ns)
        self.progress = Progress() if progress is None else progress
        self.started_empty: bool | None = None   # whether the log was empty at the first read
        self._control = control.ControlReader(instance.logs_dir) if trusted else None
        self._control_lines = 0
        self._held: list[Marker] = []            # console markers, while control is silent

    def _markers(self, lines: list[str], final: bool) -> tuple[list[Marker], list[str] | None]:
        if self._control is None:
            return markers_in(lines), None
        new = self._control.poll(final)
        self._control_lines += len(new)
        if not self._control_lines:
            self._held += markers_in(lines)
            return (self._held if final else []), new
        self._held = []
        return control.trusted_markers(new), new

    async def read(self, *, final: bool = False) -> Batch:
        """What has arrived since the last read; with `final` (the log is complete: QEMU
        has exited) also its unterminated last line."""
        before = self._log.bytes_read
        lines = await self._log.poll()
        if final:
            lines += self._log.flush()
        if self.started_empty is None:
            self.started_empty = self._log.bytes_read == 0
        markers, control_lines = self._markers(lines, final)
        batch = Batch(lines, markers, before == 0 and self._log.bytes_read > 0, final,
                      control_lines)
        self.progress.add(batch)
        return batch

    async def next(self, *, final: bool = False, wake: trio.Event | None = None) -> Batch:
        """The next lines.  Returns at once when there are some (or with `final`);
        otherwise after POLL_INTERVAL or when `wake` is set, with an empty batch."""
        batch = await self.read(final=final)
        if batch.lines or batch.markers or batch.control or batch.first_bytes or final:
            return batch
        with trio.move_on_after(POLL_INTERVAL):
            if wake is None:
                await trio.sleep_forever()
            await wake.wait()
        return batch

    def close(self) -> None:
        self._log.close()
        if self._control is not None:
            self._control.close()

    async def __aenter__(self) -> "ConsoleFollower":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()
