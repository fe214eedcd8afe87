"""The Python API: the operations of the `kindling` CLI, for synchronous callers.

    from host_shim import Kindling
    k = Kindling()                                   # $KINDLING_HOME, or pass home=
    vm = k.create(["sh", "-c", "echo hi; sleep 60"], name="demo", accel="tcg")
    vm = k.wait("demo", "running", timeout=120)      # vm.time_to_running
    k.stop("demo"); k.delete("demo")

Each method runs its own trio event loop; code that already runs under trio
awaits the functions of host_shim.lifecycle instead (same names, async).
Errors are KindlingError subclasses with a message a user can act on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from initsys import protocol

from . import accel as accel_mod
from . import lifecycle, logfiles, metadata, prepare, qemu
from .instance import Instance, kindling_home
from .metadata import Metadata
from .state import State, require_running
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
    timeline: Timeline = field(repr=False, default_factory=Timeline)
    history: tuple[dict, ...] = field(repr=False, default=())

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
            vmm_exit=meta.vmm_exit, dir=instance.dir, timeline=meta.timeline(),
            history=tuple(meta.history),
        )

    def to_json(self) -> dict:
        return {
            "id": self.id, "name": self.name, "state": str(self.state), "error": self.error,
            "created_at": protocol.format_ts(int(self.created_at * 1e9)), "boot": self.boot,
            "pid": self.pid, "command": list(self.command), "init_mode": self.init_mode,
            "agent_skipped": self.agent_skipped,
            "time_to_running": self.time_to_running, "markers": self.markers,
            "exit": self.exit, "fatal": self.fatal, "vmm_exit": self.vmm_exit,
            "dir": str(self.dir), "timeline": self.timeline.to_json(),
            "history": [dict(h, at=protocol.format_ts(h["at"])) for h in self.history],
        }


class Kindling:
    """The Kindling operations on one data directory ($KINDLING_HOME by default).

    An instance (`ref`) is named by its name, its id, or a unique prefix of its id.
    """

    def __init__(self, home: str | Path | None = None):
        self.home = Path(home).absolute() if home is not None else kindling_home()

    def _resolve(self, ref: str) -> Instance:
        return metadata.resolve(self.home, ref)[0]

    def create(self, command: list[str] | tuple[str, ...], *, name: str | None = None,
               accel: str | None = None, env: dict[str, str] | None = None,
               workdir: str | None = None, memory_mib: int = qemu.DEFAULT_MEMORY_MIB,
               cpus: int = qemu.DEFAULT_CPUS, rootfs: Path | None = None,
               base: str | None = None, init_mode: str = "auto",
               kernel: Path | None = None, modules: Path | None = None,
               log_max_bytes: int = logfiles.DEFAULT_MAX_BYTES,
               log_keep: int = logfiles.DEFAULT_KEEP) -> InstanceInfo:
        """Create an instance running `command` and boot it.  Returns while the guest
        is still Initializing; `wait(ref, "running")` for more.  `accel`: kvm, tcg or
        auto (default: $KINDLING_ACCEL, else auto).  `base`: busybox or debian (whose own
        command /sbin/init runs when `command` is empty); `init_mode`: auto, exec or systemd."""
        opts = prepare.CreateOptions(
            command=tuple(command), name=name, accel=accel or accel_mod.default_accel(),
            env=tuple((env or {}).items()),
            workdir=workdir, memory_mib=memory_mib, cpus=cpus, rootfs=rootfs, base=base,
            init_mode=init_mode, kernel=kernel,
            modules=modules, log_max_bytes=log_max_bytes, log_keep=log_keep)
        return InstanceInfo.of(*trio.run(partial(lifecycle.create, opts, self.home)))

    def start(self, ref: str) -> InstanceInfo:
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, trio.run(lifecycle.start, instance))

    def stop(self, ref: str, timeout: float = lifecycle.DEFAULT_STOP_TIMEOUT) -> InstanceInfo:
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, trio.run(partial(lifecycle.stop, instance,
                                                          timeout=timeout)))

    def delete(self, ref: str) -> InstanceInfo:
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, trio.run(lifecycle.delete, instance))

    def list(self) -> list[InstanceInfo]:
        return [InstanceInfo.of(i, m)
                for i, m in trio.run(lifecycle.list_instances, self.home)]

    def inspect(self, ref: str) -> InstanceInfo:
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, trio.run(lifecycle.observe, instance))

    def wait(self, ref: str, state: str | State = State.RUNNING,
             timeout: float | None = None) -> InstanceInfo:
        """Block until the instance is Running (or has been, this boot) or Stopped."""
        target = State(str(state).capitalize()) if not isinstance(state, State) else state
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, trio.run(partial(lifecycle.wait, instance, target,
                                                          timeout=timeout)))

    def logs(self, ref: str, source: str = "app") -> list[str]:
        """The log lines so far (all boots); `app` has the sentinel lines filtered out."""
        instance = self._resolve(ref)
        lines: list[str] = []
        trio.run(partial(lifecycle.logs, instance, lines.append, source=source))
        return lines

    def analyze(self, ref: str) -> InstanceInfo:
        """The instance with its complete boot timeline (`.timeline`, `.time_to_running`)."""
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, trio.run(lifecycle.analyze, instance))

    def require_running(self, ref: str, operation: str = "this operation") -> InstanceInfo:
        """The guard for operations that need a running guest (exec, copy, stat): the
        instance if it is Running, else NotRunning (a KindlingError) saying what to do."""
        info = self.inspect(ref)
        require_running(ref, info.state, operation)
        return info
