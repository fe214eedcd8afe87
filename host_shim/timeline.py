"""The boot timeline: guest stages (from KINDLING-STAGE lines) and host events.

Plain data, persisted with the instance (metadata.json); `format_timeline` prints
it and host_shim/chart.py draws it (`kindling analyze`).

Guest stage times are the guest's CLOCK_MONOTONIC in seconds (~0 at kernel
start); host event times are seconds since `create` (or `start`) was asked for.
The two clocks are not comparable: they are shown side by side, never subtracted.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from initsys import protocol
from initsys.protocol import Marker

# Host events, in the order they normally happen (seconds since `create`/`start` was asked).
REQUESTED = "requested"                  # create or start called: t = 0
IMAGES_READY = "images ready"            # kernel, initrd, rootfs from the builder's cache
DISKS_READY = "disks ready"              # overlay and config disks made
LAUNCH = "launch"                        # QEMU started (with -S)
VMM_READY = "VMM ready"                  # QEMU answers QMP: state Created
GUEST_STARTED = "guest started"          # QMP cont: state Initializing
FIRST_CONSOLE_BYTE = "first console byte"
PROGRAM_START_SEEN = "PROGRAM-START seen"
AGENT_READY_SEEN = "AGENT-READY seen"
RUNNING = "Running"                      # the host derived Running: time-to-Running
EXIT_SEEN = "EXIT seen"
FATAL_SEEN = "FATAL seen"
QEMU_EXITED = "QEMU exited"
HOST_EVENT_ORDER = (REQUESTED, IMAGES_READY, DISKS_READY, LAUNCH, VMM_READY, GUEST_STARTED,
                    FIRST_CONSOLE_BYTE, PROGRAM_START_SEEN, AGENT_READY_SEEN, RUNNING,
                    EXIT_SEEN, FATAL_SEEN, QEMU_EXITED)


@dataclass(frozen=True)
class Stage:
    name: str
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class HostEvent:
    name: str
    at: float


def stage_from_marker(marker: Marker) -> Stage | None:
    """A Stage from a `KINDLING-STAGE name=N start=S end=E` marker; None if malformed."""
    if marker.kind != protocol.STAGE:
        return None
    name = marker.fields.get("name")
    try:
        start = float(marker.fields["start"])
        end = float(marker.fields["end"])
    except (KeyError, ValueError):
        return None
    if not name or not (math.isfinite(start) and math.isfinite(end)):
        return None
    return Stage(name, start, end)


@dataclass
class Timeline:
    stages: list[Stage] = field(default_factory=list)
    host: list[HostEvent] = field(default_factory=list)

    def add_marker(self, marker: Marker | None) -> Stage | None:
        stage = stage_from_marker(marker) if marker is not None else None
        if stage is not None:
            self.stages.append(stage)
        return stage

    def mark(self, name: str, at: float) -> None:
        """Record a host event; only its first occurrence counts."""
        if self.host_time(name) is None:
            self.host.append(HostEvent(name, at))

    def host_time(self, name: str) -> float | None:
        return next((e.at for e in self.host if e.name == name), None)

    @classmethod
    def from_console(cls, lines: Iterable[str]) -> "Timeline":
        """The guest part of the timeline from a recorded console transcript."""
        timeline = cls()
        for line in lines:
            timeline.add_marker(protocol.parse_line(line))
        return timeline

    def to_json(self) -> dict:
        return {
            "stages": [{"name": s.name, "start": s.start, "end": s.end} for s in self.stages],
            "host": [{"name": e.name, "at": e.at} for e in self.host],
        }


def _host_sort_key(event: HostEvent):
    order = HOST_EVENT_ORDER.index(event.name) if event.name in HOST_EVENT_ORDER else 99
    return (round(event.at, 3), order)


def format_timeline(timeline: Timeline) -> str:
    """The timeline as a small text table (no trailing newline); '' when empty."""
    out = []
    if timeline.stages:
        width = max(12, *(len(s.name) for s in timeline.stages))
        out.append("boot timeline (guest clock, s):")
        out.append(f"  {'stage':<{width}}  {'start':>8}  {'duration':>8}")
        for s in sorted(timeline.stages, key=lambda s: (s.start, s.end)):
            out.append(f"  {s.name:<{width}}  {s.start:8.3f}  {s.duration:8.3f}")
    if timeline.host:
        width = max(len(e.name) for e in timeline.host)
        out.append("host events (s since create/start):")
        for e in sorted(timeline.host, key=_host_sort_key):
            out.append(f"  {e.name:<{width}}  {e.at:8.3f}")
    return "\n".join(out)
