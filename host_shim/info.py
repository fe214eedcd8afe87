"""InstanceInfo: one instance as the host sees it -- the one shape every command that
reports an instance prints with --json (`to_json`), and what the Python API returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from initsys import protocol

from .instance import Instance
from .metadata import Metadata
from .state import State
from .timeline import Timeline


@dataclass(frozen=True)
class InstanceInfo:
    """One instance as the host sees it (what `kindling inspect --json` prints)."""
    id: str
    name: str
    state: State
    error: str | None
    created_at: float                  # seconds since the epoch
    boot: int                          # boots so far (create is the first)
    pid: int | None                    # QEMU's pid while it runs
    command: tuple[str, ...]
    init_mode: str | None              # exec | systemd, from config.json (None: a raw test config)
    agent_skipped: bool
    time_to_running: float | None      # s from create/start to Running, as the host saw it
    markers: dict                      # kind -> {ts, seen_at, fields}: this boot's markers
    exit: dict | None                  # {"code", "message"} from HYPEMAN-EXIT
    fatal: dict | None                 # {"stage", "error"} from KINDLING-FATAL
    vmm_exit: str | None               # how QEMU ended, when known
    dir: Path
    options: dict = field(default_factory=dict)  # create's options (host_shim/options.py)
    timeline: Timeline = field(repr=False, default_factory=Timeline)
    history: tuple[dict, ...] = field(repr=False, default=())
    # the early-boot watchdog's relaunches: {"boot", "at", "reason"} (host_shim/watchdog.py)
    relaunches: tuple[dict, ...] = ()

    @classmethod
    def of(cls, instance: Instance, meta: Metadata) -> "InstanceInfo":
        exit_marker = meta.markers.get(protocol.EXIT)
        exit_info = None
        if exit_marker is not None:
            code = exit_marker.fields.get("code")
            exit_info = {"code": int(code) if code and code.lstrip("-").isdigit() else code,
                         "message": exit_marker.fields.get("message")}
        fatal = meta.markers.get(protocol.FATAL)
        return cls(
            id=meta.id, name=meta.name, state=meta.state, error=meta.error,
            created_at=meta.created_at / 1e9, boot=meta.boot,
            pid=meta.pid if meta.state not in (State.STOPPED, State.STANDBY) else None,
            command=tuple(meta.command), agent_skipped=meta.agent_skipped,
            init_mode=(meta.config.get("init_mode", "exec") if isinstance(meta.config, dict)
                       else None),
            time_to_running=meta.time_to_running,
            markers={kind: {"ts": protocol.format_ts(m.ts) if m.ts is not None else None,
                            "seen_at": protocol.format_ts(m.seen_at), "fields": m.fields}
                     for kind, m in sorted(meta.markers.markers.items())},
            exit=exit_info,
            fatal=dict(fatal.fields) if fatal is not None else None,
            vmm_exit=meta.vmm_exit, dir=instance.dir, options=dict(meta.options),
            timeline=meta.timeline(),
            history=tuple(meta.history),
            relaunches=tuple({k: r.get(k) for k in ("boot", "at", "reason")}
                             for r in meta.relaunches),
        )

    def to_json(self) -> dict:
        return {
            "id": self.id, "name": self.name, "state": str(self.state), "error": self.error,
            "created_at": protocol.format_ts(int(self.created_at * 1e9)), "boot": self.boot,
            "pid": self.pid, "command": list(self.command), "init_mode": self.init_mode,
            "agent_skipped": self.agent_skipped,
            "time_to_running": self.time_to_running, "markers": self.markers,
            "exit": self.exit, "fatal": self.fatal, "vmm_exit": self.vmm_exit,
            "dir": str(self.dir), "options": self.options, "timeline": self.timeline.to_json(),
            "history": [dict(h, at=protocol.format_ts(h["at"])) for h in self.history],
            "relaunches": [dict(r, at=protocol.format_ts(r["at"])) for r in self.relaunches],
        }
