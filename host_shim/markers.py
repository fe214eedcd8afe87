"""Boot markers on the host: finding them in the serial logs, and remembering them.

PROTOCOL.md §6 "Marker discovery on the host", point by point:

* scan the serial log and its rotated copies, newest first (`app.log`, `app.log.1`, ...);
* ignore any file last modified before the instance's current start, so markers
  of a previous boot never make a fresh boot look Running (and since rotated
  copies are older than the log they came from, the first stale file ends the scan);
* keep the newest timestamp (per kind; a marker whose `ts` does not parse is "not seen");
* scan at most once a second per instance while nothing is found (`scan_due`);
* persist what was found with the instance's metadata (`MarkerRecord.to_json`), and
  hydrate from it when a new shim process starts (`MarkerRecord.from_json`).

Rotation (host_shim/logfiles.py) cuts the log at an arbitrary byte, so one line can
start in `app.log.1` and end in `app.log`.  `iter_lines` joins the files oldest
first, so such lines are whole and every line comes in the order it was printed.
The last line of the newest file counts only once it ends with a newline (it may
still be being written), unless the log is complete (`final`).

Of several EXIT (or FATAL) lines the last one wins, as on hypeman's host: PID 1
prints its own after the program ended, so a program's look-alike line is always
earlier.  (A Kindling host with the control port reads markers from that channel
instead: host_shim/control.py.)
"""

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from initsys import protocol
from initsys.protocol import Marker

from .timeline import Stage, stage_from_marker

SCAN_INTERVAL_NS = 1_000_000_000

# Markers whose newest timestamp is kept.
TIMESTAMPED = (protocol.PROGRAM_START, protocol.AGENT_READY, protocol.HEADERS_START,
               protocol.HEADERS_READY, protocol.HEADERS_FAILED)
# Markers without a timestamp: one per boot; the last one seen wins (PID 1's is last).
LAST = (protocol.EXIT, protocol.FATAL)


@dataclass
class SeenMarker:
    kind: str
    fields: dict[str, str]
    ts: int | None          # ns since the epoch (guest clock); None for EXIT/FATAL
    seen_at: int            # host time (ns since the epoch) when the host first saw it

    def to_json(self) -> dict:
        return {"kind": self.kind, "fields": dict(self.fields), "ts": self.ts,
                "seen_at": self.seen_at}

    @classmethod
    def from_json(cls, obj: dict) -> "SeenMarker":
        return cls(obj["kind"], dict(obj["fields"]), obj.get("ts"), int(obj["seen_at"]))


@dataclass
class MarkerRecord:
    """The markers of one boot: the newest of each kind, and the boot stages."""
    markers: dict[str, SeenMarker] = field(default_factory=dict)
    stages: list[Stage] = field(default_factory=list)
    scanned_at: int | None = None    # host ns of the last full scan

    def add(self, marker: Marker, seen_at: int) -> bool:
        """Merge one marker (of an EXIT or FATAL, a later different one replaces the
        earlier); True when something changed."""
        if marker.kind == protocol.STAGE:
            stage = stage_from_marker(marker)
            if stage is None or stage in self.stages:
                return False
            self.stages.append(stage)
            return True
        if marker.kind in TIMESTAMPED:
            ts = marker.ts
            if ts is None:
                return False      # an unparsable timestamp means "not seen"
            old = self.markers.get(marker.kind)
            if old is not None and old.ts > ts:
                return False
            if old is not None and old.ts == ts:      # the same marker: first sight counts
                if seen_at >= old.seen_at:
                    return False
                old.seen_at = seen_at
                return True
            self.markers[marker.kind] = SeenMarker(marker.kind, dict(marker.fields), ts, seen_at)
            return True
        if marker.kind in LAST:
            old = self.markers.get(marker.kind)
            if old is None or old.fields != marker.fields:
                self.markers[marker.kind] = SeenMarker(marker.kind, dict(marker.fields), None,
                                                       seen_at)
                return True
            if seen_at < old.seen_at:
                old.seen_at = seen_at
                return True
        return False

    def merge(self, other: "MarkerRecord") -> bool:
        changed = False
        for seen in other.markers.values():
            changed |= self.add(Marker(seen.kind, seen.fields), seen.seen_at)
        for stage in other.stages:
            if stage not in self.stages:
                self.stages.append(stage)
                changed = True
        if other.scanned_at is not None and (self.scanned_at or 0) < other.scanned_at:
            self.scanned_at = other.scanned_at
        return changed

    def get(self, kind: str) -> SeenMarker | None:
        return self.markers.get(kind)

    @property
    def program_started(self) -> bool:
        return protocol.PROGRAM_START in self.markers

    @property
    def agent_ready(self) -> bool:
        return protocol.AGENT_READY in self.markers

    def ready(self, agent_skipped: bool) -> bool:
        """Everything Running needs from the guest has been seen."""
        return self.program_started and (agent_skipped or self.agent_ready)

    def to_json(self) -> dict:
        return {
            "markers": {kind: m.to_json() for kind, m in sorted(self.markers.items())},
            "stages": [{"name": s.name, "start": s.start, "end": s.end} for s in self.stages],
            "scanned_at": self.scanned_at,
        }

    @classmethod
    def from_json(cls, obj: dict | None) -> "MarkerRecord":
        obj = obj or {}
        return cls(
            markers={kind: SeenMarker.from_json(m) for kind, m in obj.get("markers", {}).items()},
            stages=[Stage(s["name"], float(s["start"]), float(s["end"]))
                    for s in obj.get("stages", [])],
            scanned_at=obj.get("scanned_at"),
        )


def scan_due(record: MarkerRecord, agent_skipped: bool, now_ns: int) -> bool:
    """Whether a full scan may run now: only while the markers Running needs are
    missing, and at most once a second."""
    if record.ready(agent_skipped):
        return False
    return record.scanned_at is None or now_ns - record.scanned_at >= SCAN_INTERVAL_NS


# --- the log files -----------------------------------------------------------

APP_LOG = "app.log"


def rotated_index(name: str) -> int | None:
    """0 for app.log, N for app.log.N, None for anything else."""
    if name == APP_LOG:
        return 0
    prefix = APP_LOG + "."
    if name.startswith(prefix) and name[len(prefix):].isdigit():
        return int(name[len(prefix):])
    return None


def app_logs_newest_first(log_dir: Path) -> list[Path]:
    try:
        names = os.listdir(log_dir)
    except FileNotFoundError:
        return []
    indexed = sorted((i, n) for n in names if (i := rotated_index(n)) is not None)
    return [Path(log_dir, n) for _, n in indexed]


def fresh_logs(log_dir: Path, since_ns: int | None) -> list[Path]:
    """The logs written during the current boot, newest first: stops at the first file
    last modified before `since_ns` (the boot's start on the filesystem's clock)."""
    fresh = []
    for path in app_logs_newest_first(log_dir):
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            continue
        if since_ns is not None and mtime < since_ns:
            break
        fresh.append(path)
    return fresh


def iter_lines(chunks: Iterable[bytes], final: bool = False) -> Iterator[str]:
    """Complete lines of a byte stream given as chunks newest first (the files of a
    rotated log, newest first), oldest line first: the order the guest printed them
    (the last EXIT is PID 1's).  A line cut by rotation is joined across its files."""
    data = b"".join(reversed(list(chunks)))
    lines = data.split(b"\n")
    if not (final and lines[-1]):
        lines.pop()    # "" after a final newline, or a line that may still be being written
    for line in lines:
        yield _decode(line)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").rstrip("\r")


def read_files(paths: Iterable[Path]) -> Iterator[bytes]:
    for path in paths:
        try:
            yield path.read_bytes()
        except FileNotFoundError:
            yield b""


def scan(chunks: Iterable[bytes], *, final: bool = False) -> list[Marker]:
    """Every marker in the stream (chunks newest first), in the order they were printed."""
    found = []
    for line in iter_lines(chunks, final=final):
        marker = protocol.parse_line(line)
        if marker is not None:
            found.append(marker)
    return found


def scan_logs(log_dir: Path, since_ns: int | None, *, final: bool = False) -> list[Marker]:
    """The markers in the fresh logs of `log_dir` (callers hold the logs lock, shared)."""
    return scan(read_files(fresh_logs(log_dir, since_ns)), final=final)


def record_from(markers: Iterable[Marker], seen_at: int) -> MarkerRecord:
    record = MarkerRecord()
    for marker in markers:
        record.add(marker, seen_at)
    return record
