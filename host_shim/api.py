"""The Python API: the operations of the `kindling` CLI, for synchronous callers.

    from host_shim import Kindling
    k = Kindling()                                   # $KINDLING_HOME, or pass home=
    vm = k.create(["sh", "-c", "echo hi; sleep 60"], name="demo", accel="tcg")
    vm = k.wait("demo", "running", timeout=120)      # vm.time_to_running
    print(k.exec("demo", ["uname", "-r"]).stdout)
    k.stop("demo"); k.delete("demo")

Each method runs its own trio event loop; code that already runs under trio
awaits the functions of host_shim.lifecycle and host_shim.agent_ops instead
(the CLI calls those same functions).  Errors are KindlingError subclasses with
a message a user can act on.  docs/api.md documents every method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import contextlib
import io
from collections.abc import Callable

import trio

from initsys import protocol

from . import accel as accel_mod
from . import agent_ops, api_args, lifecycle, logfiles, metadata, prepare, qemu, runner, volumes
from .agent_client import CopyResult, ExecResult, StatResult
from .errors import die, kindling_error_in
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


@dataclass(frozen=True)
class RunResult:
    """What `Kindling.run` returns: the program's exit code and what it printed."""
    code: int
    output: str        # the program's console output (stdout and stderr, as the serial console has it)
    messages: str      # Kindling's own notes (states, the boot timeline), `kindling run`'s stderr


class Kindling:
    """The Kindling operations on one data directory ($KINDLING_HOME by default).

    An instance (`ref`) is named by its name, its id, or a unique prefix of its id.
    """

    def __init__(self, home: str | Path | None = None):
        self.home = Path(home).absolute() if home is not None else kindling_home()

    def _resolve(self, ref: str) -> Instance:
        return metadata.resolve(self.home, ref)[0]

    @staticmethod
    def _call(fn, *args, **kwargs):
        """Run one async operation in its own trio loop; a KindlingError that a nursery
        wrapped in an exception group comes out as itself."""
        try:
            return trio.run(partial(fn, *args, **kwargs))
        except BaseExceptionGroup as group:
            raise kindling_error_in(group) or group

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
        return InstanceInfo.of(instance, self._call(lifecycle.start, instance))

    def stop(self, ref: str, timeout: float = lifecycle.DEFAULT_STOP_TIMEOUT) -> InstanceInfo:
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, self._call(lifecycle.stop, instance, timeout=timeout))

    def delete(self, ref: str) -> InstanceInfo:
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, self._call(lifecycle.delete, instance))

    def list(self) -> list[InstanceInfo]:
        return [InstanceInfo.of(i, m)
                for i, m in self._call(lifecycle.list_instances, self.home)]

    def inspect(self, ref: str) -> InstanceInfo:
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, self._call(lifecycle.observe, instance))

    def wait(self, ref: str, state: str | State = State.RUNNING,
             timeout: float | None = None) -> InstanceInfo:
        """Block until the instance is Running (or has been, this boot) or Stopped."""
        target = State(str(state).capitalize()) if not isinstance(state, State) else state
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, self._call(lifecycle.wait, instance, target,
                                                    timeout=timeout))

    def logs(self, ref: str, source: str = "app", *, follow: bool = False,
             on_line: Callable[[str], None] | None = None) -> list[str]:
        """The log lines (all boots); `app` is the serial console without the sentinel
        lines, `vmm` QEMU's own messages.  With `follow`, keep reading until the VM
        stops.  With `on_line`, each line is passed to it as it comes (and the list
        returned is empty); without, the lines are returned."""
        api_args.callback("on_line", on_line)
        instance = self._resolve(ref)
        lines: list[str] = []
        self._call(lifecycle.logs, instance, on_line or lines.append, source=source,
                   follow=bool(follow))
        return lines

    def analyze(self, ref: str) -> InstanceInfo:
        """The instance with its complete boot timeline (`.timeline`, `.time_to_running`)."""
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, self._call(lifecycle.analyze, instance))

    def require_running(self, ref: str, operation: str = "this operation") -> InstanceInfo:
        """The guard for operations that need a running guest (exec, copy, stat): the
        instance if it is Running, else NotRunning (a KindlingError) saying what to do."""
        info = self.inspect(ref)
        require_running(ref, info.state, operation)
        return info

    # --- the agent: exec, copy, stat (the instance must be Running) ------------

    def exec(self, ref: str, argv: list[str], *, env: dict[str, str] | None = None,
             workdir: str | None = None, user: int | str | None = None, tty: bool = False,
             stdin: bytes | str | None = None, timeout: float | None = None) -> ExecResult:
        """Run `argv` in the Running instance and wait for it: an ExecResult with
        `code` (124: timed out, 128+N: killed by signal N, 126/127 with `.error`: could
        not start), `stdout` and `stderr` bytes (at most 64 MiB each; stream larger
        output with exec_stream)."""
        return self.exec_stream(ref, argv, env=env, workdir=workdir, user=user, tty=tty,
                                stdin=stdin, timeout=timeout)

    def exec_stream(self, ref: str, argv: list[str], *,
                    on_stdout: Callable[[bytes], None] | None = None,
                    on_stderr: Callable[[bytes], None] | None = None,
                    env: dict[str, str] | None = None, workdir: str | None = None,
                    user: int | str | None = None, tty: bool = False,
                    stdin: bytes | str | None = None,
                    timeout: float | None = None) -> ExecResult:
        """exec, passing each chunk of output to `on_stdout` / `on_stderr` as it comes
        (a stream without a callback is captured into the result).  In TTY mode stderr
        is merged into stdout."""
        argv = api_args.argv(argv)
        sinks = {}
        for name, fn in (("stdout", on_stdout), ("stderr", on_stderr)):
            if api_args.callback(f"on_{name}", fn) is not None:
                sinks[name] = partial(_feed, fn)
        return self._call(agent_ops.run_exec, ref, argv, env=api_args.env(env),
                          cwd=None if workdir is None else api_args.guest_path("workdir", workdir),
                          user=api_args.user(user), tty=bool(tty), stdin=api_args.data(stdin),
                          timeout=api_args.seconds("timeout", timeout), home=self.home, **sinks)

    def copy_in(self, ref: str, local: str | Path, remote: str) -> CopyResult:
        """Copy a local file or tree so that it becomes `remote` (absolute) in the guest;
        modes, mtimes and symlinks are kept.  A CopyResult: entries, bytes, skipped."""
        local = api_args.host_path("local", local)
        remote = api_args.guest_path("remote", remote)
        return self._call(agent_ops.copy_in, ref, local, remote, self.home)

    def copy_out(self, ref: str, remote: str, local: str | Path) -> CopyResult:
        """Copy the guest's file or tree `remote` so that it becomes `local` on the host
        (names with '..', writes through symlinks and setuid bits are refused/dropped)."""
        remote = api_args.guest_path("remote", remote)
        local = api_args.host_path("local", local)
        return self._call(agent_ops.copy_out, ref, remote, local, self.home)

    def cp(self, src: str | Path, dst: str | Path) -> CopyResult:
        """`kindling cp`: exactly one of src and dst is "VM:/path"."""
        src, dst = api_args.host_path("src", src), api_args.host_path("dst", dst)
        return self._call(agent_ops.copy, src, dst, self.home)

    def stat(self, ref: str, path: str) -> StatResult:
        """What `path` is in the guest: a StatResult (exists, type, mode, size, uid, gid,
        mtime_ns, target); `exists` is False when there is nothing there."""
        path = api_args.guest_path("path", path)
        return self._call(agent_ops.stat_path, ref, path, self.home)

    # --- volumes ---------------------------------------------------------------

    def volume_create(self, name: str, size: int | str) -> volumes.Volume:
        """An empty ext4 volume $KINDLING_HOME/volumes/NAME.img of `size` bytes (an int,
        or a str such as "64M"); attach it with create(..., volumes=["NAME:/path"])."""
        if not isinstance(name, str):
            die(f"name: expected a volume name (str), got {name!r}")
        image = volumes.create(self.home, name, api_args.size(size))
        return volumes.Volume(name, image, image.stat().st_size)

    def volume_list(self) -> list[volumes.Volume]:
        """The named volumes (name, path, size), by name."""
        return volumes.list_volumes(self.home)

    def volume_rm(self, name: str) -> None:
        """Delete a named volume; refused while an instance uses it."""
        if not isinstance(name, str):
            die(f"name: expected a volume name (str), got {name!r}")
        volumes.remove(self.home, name)

    # --- run -------------------------------------------------------------------

    def run(self, command: list[str] | tuple[str, ...] = (), *,
            timeout: float = runner.DEFAULT_TIMEOUT, keep: bool = False,
            **options) -> RunResult:
        """`kindling run`: create an instance, stream its program to the end, stop and
        remove it (unless `keep`).  `options` are create's (name, accel, env, memory_mib,
        volumes, ...).  Returns the program's exit code and output; a guest that fails
        to boot, or a `timeout` (seconds) reached first, raises a KindlingError.  Call it
        from the main thread (it handles SIGINT/SIGTERM as the CLI does)."""
        opts = self._run_options(command, api_args.seconds("timeout", timeout), keep, options)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = self._call(runner.run_async, opts, self.home)
        return RunResult(code, out.getvalue(), err.getvalue())

    def _run_options(self, command, timeout: float, keep: bool, options: dict):
        api_args.run_options(options)
        if command:
            command = api_args.argv(command, "command")
        options["env"] = tuple((api_args.env(options.get("env")) or {}).items())
        options["volumes"] = tuple(
            v if isinstance(v, volumes.VolumeSpec) else volumes.parse_spec(self.home, v)
            for v in options.get("volumes", ()))
        options["accel"] = options.get("accel") or accel_mod.default_accel()
        return runner.RunOptions(command=tuple(command), timeout=timeout, keep=bool(keep),
                                 **options)


async def _feed(fn: Callable[[bytes], None], data: bytes) -> None:
    fn(data)
