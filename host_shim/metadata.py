"""metadata.json: everything the host knows about an instance, persisted.

Written atomically (temporary file + rename), so readers never need a lock;
read-modify-write happens under the instance's meta.lock (`update`).  A new shim
process hydrates from it: the markers found so far, the recorded state and its
history, the boot's timeline.
"""

import json
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import locks
from .errors import NoSuchInstance, die
from .instance import LOCK_TIMEOUT, Instance, all_instances, instances_dir
from .markers import MarkerRecord
from .state import State
from .timeline import HostEvent, Timeline

FORMAT = 1
MAX_HISTORY = 64


@dataclass
class Metadata:
    id: str
    name: str
    created_at: int                       # host ns since the epoch
    command: list[str]
    config: dict | str | None             # config.json as sent; str for the raw test hook
    agent_skipped: bool                   # Running needs PROGRAM-START only
    argv: list[str]                       # the QEMU command line (reused by `start`)
    accel: str
    log_max_bytes: int
    log_keep: int
    boot: int = 0                         # boots so far (create is boot 1)
    boot_requested_at: int | None = None  # host ns: t=0 of the boot's timeline
    log_since: int | None = None          # filesystem-clock ns: older log files are stale
    pid: int | None = None                # QEMU's pid in the current boot
    state: State = State.STOPPED          # the last recorded state
    last_known: State = State.STOPPED     # the last recorded state other than Unknown
    error: str | None = None              # why the state is Unknown (or what went wrong)
    history: list[dict] = field(default_factory=list)  # {"state", "at" (ns), "boot", "inferred"}
    markers: MarkerRecord = field(default_factory=MarkerRecord)
    events: list[HostEvent] = field(default_factory=list)  # s since boot_requested_at
    time_to_running: float | None = None  # s from boot request to Running seen by the host
    vmm_exit: str | None = None           # how QEMU ended, when known
    logs_final: bool = False              # the boot's log was scanned after QEMU ended
    options: dict = field(default_factory=dict)  # create's options (options.to_json)
    # early-boot watchdog relaunches (host_shim/watchdog.py): {"boot", "at", "requested", "reason"}
    relaunches: list[dict] = field(default_factory=list)
    restored_at: int | None = None        # host ns: this boot was last restored from a snapshot

    # -- timeline --

    def mark(self, name: str, at_ns: int | None = None) -> None:
        """Record a host event of the current boot (its first occurrence counts)."""
        if self.boot_requested_at is None or any(e.name == name for e in self.events):
            return
        at_ns = time.time_ns() if at_ns is None else at_ns
        self.events.append(HostEvent(name, max(0.0, (at_ns - self.boot_requested_at) / 1e9)))

    def timeline(self) -> Timeline:
        return Timeline(list(self.markers.stages), list(self.events))

    def record_state(self, state: State, *, inferred: bool = False, at_ns: int | None = None):
        at_ns = time.time_ns() if at_ns is None else at_ns
        self.state = state
        if state is not State.UNKNOWN:
            self.last_known = state
            self.error = None
        self.history.append({"state": str(state), "at": at_ns, "boot": self.boot,
                             "inferred": inferred})
        del self.history[:-MAX_HISTORY]

    def reached_this_boot(self, state: State) -> bool:
        return any(h["state"] == state and h["boot"] == self.boot for h in self.history)

    # -- JSON --

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "id": self.id, "name": self.name, "created_at": self.created_at,
            "command": self.command, "config": self.config,
            "agent_skipped": self.agent_skipped, "argv": self.argv, "accel": self.accel,
            "log_max_bytes": self.log_max_bytes, "log_keep": self.log_keep,
            "boot": self.boot, "boot_requested_at": self.boot_requested_at,
            "log_since": self.log_since, "pid": self.pid,
            "state": str(self.state), "last_known": str(self.last_known), "error": self.error,
            "history": self.history, "markers": self.markers.to_json(),
            "events": [{"name": e.name, "at": e.at} for e in self.events],
            "time_to_running": self.time_to_running, "vmm_exit": self.vmm_exit,
            "logs_final": self.logs_final, "options": self.options,
            "relaunches": self.relaunches, "restored_at": self.restored_at,
        }

    @classmethod
    def from_json(cls, obj: dict) -> "Metadata":
        return cls(
            id=obj["id"], name=obj["name"], created_at=obj["created_at"],
            command=list(obj.get("command") or []), config=obj.get("config"),
            agent_skipped=bool(obj.get("agent_skipped")), argv=list(obj.get("argv") or []),
            accel=obj.get("accel", ""), log_max_bytes=int(obj["log_max_bytes"]),
            log_keep=int(obj["log_keep"]), boot=int(obj.get("boot", 0)),
            boot_requested_at=obj.get("boot_requested_at"), log_since=obj.get("log_since"),
            pid=obj.get("pid"), state=State(obj.get("state", State.STOPPED)),
            last_known=State(obj.get("last_known", State.STOPPED)), error=obj.get("error"),
            history=list(obj.get("history") or []),
            markers=MarkerRecord.from_json(obj.get("markers")),
            events=[HostEvent(e["name"], float(e["at"])) for e in obj.get("events") or []],
            time_to_running=obj.get("time_to_running"), vmm_exit=obj.get("vmm_exit"),
            logs_final=bool(obj.get("logs_final")), options=dict(obj.get("options") or {}),
            relaunches=list(obj.get("relaunches") or []),
            restored_at=obj.get("restored_at"),
        )


def load(instance: Instance) -> Metadata:
    try:
        data = instance.metadata_path.read_bytes()
    except FileNotFoundError:
        raise NoSuchInstance(f"no such instance: {instance.id} (it was deleted)") from None
    try:
        return Metadata.from_json(json.loads(data))
    except (ValueError, KeyError, TypeError) as e:
        die(f"corrupt {instance.metadata_path}: {type(e).__name__}: {e}",
            hint=f"delete the instance with `kindling delete {instance.id}`")


def save(instance: Instance, meta: Metadata) -> None:
    tmp = instance.metadata_path.with_name(f".metadata.json.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(meta.to_json(), indent=1, sort_keys=True) + "\n")
        os.replace(tmp, instance.metadata_path)
    except FileNotFoundError:
        raise NoSuchInstance(f"no such instance: {instance.id} (it was deleted)") from None


@asynccontextmanager
async def update(instance: Instance, timeout: float = LOCK_TIMEOUT):
    """`async with update(inst) as meta:` ... saved on a normal exit, under meta.lock."""
    if not instance.dir.is_dir():
        raise NoSuchInstance(f"no such instance: {instance.id} (it was deleted)")
    async with locks.alocked(instance.meta_lock, timeout=timeout):
        meta = load(instance)
        yield meta
        save(instance, meta)


# --- finding instances --------------------------------------------------------

def load_all(home: Path) -> list[tuple[Instance, Metadata]]:
    found = []
    for instance in all_instances(home):
        try:
            found.append((instance, load(instance)))
        except NoSuchInstance:
            continue      # deleted while we looked
    return found


def resolve(home: Path, ref: str) -> tuple[Instance, Metadata]:
    """An instance by name, id, or unique id prefix (as docker does)."""
    if not ref:
        die("no instance given", hint="name an instance by its name or id (`kindling list`)")
    candidates = load_all(home)
    for instance, meta in candidates:
        if meta.name == ref or meta.id == ref:
            return instance, meta
    matches = [(i, m) for i, m in candidates if m.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        die(f"instance id prefix {ref!r} is ambiguous: it matches "
            f"{', '.join(m.id for _, m in matches)}", hint="give more of the id")
    raise NoSuchInstance(f"no such instance: {ref}",
                         hint=f"`kindling list` shows the instances in {instances_dir(home)}")
