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

import contextlib
import math
from inspect import Parameter
import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from . import (agent_ops, api_args, fork, images, lifecycle, metadata, options, runner, standby,
               template, volumes)
from .agent_client import CopyResult, ExecResult, StatResult
from .errors import TimedOut, die, kindling_error_in
from .info import InstanceInfo
from .instance import Instance, kindling_home
from .state import State, require_running

__all__ = ["InstanceInfo", "Kindling", "RunResult"]


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

    def create(self, command=(), **opts) -> InstanceInfo:
        """Create an instance running `command` and boot it.  Returns while the guest
        is still Initializing; `wait(ref, "running")` for more.  The keywords are
        create's options (host_shim/options.py; sizes as 512M/1G or a number):

"""
        values = options.make(options.CreateOptions, dict(opts, command=command), self.home)
        return InstanceInfo.of(*self._call(lifecycle.create, values, self.home))

    create.__signature__ = options.signature(
        "create", first=(Parameter("self", Parameter.POSITIONAL_ONLY),))
    create.__doc__ += options.api_doc("create")

    def start(self, ref: str) -> InstanceInfo:
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, self._call(lifecycle.start, instance))

    def stop(self, ref: str, timeout: float = lifecycle.DEFAULT_STOP_TIMEOUT) -> InstanceInfo:
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, self._call(lifecycle.stop, instance, timeout=timeout))

    def delete(self, ref: str) -> InstanceInfo:
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, self._call(lifecycle.delete, instance))

    def pause(self, ref: str) -> InstanceInfo:
        """Running -> Paused (the vCPUs stop)."""
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, self._call(standby.pause, instance))

    def resume(self, ref: str) -> InstanceInfo:
        """Paused -> Running."""
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, self._call(standby.resume, instance))

    def standby(self, ref: str) -> InstanceInfo:
        """Running -> Standby: the whole VM saved to the instance's snapshot, QEMU ended."""
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, self._call(standby.standby, instance))

    def restore(self, ref: str) -> InstanceInfo:
        """Standby -> Running from the snapshot (kept until the next standby, stop, delete)."""
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, self._call(standby.restore, instance))

    def fork(self, ref: str, name: str, *, from_running: bool = False,
             target_state: str | None = None) -> InstanceInfo:
        """A new instance `name` from a Stopped or Standby one (`kindling fork`): its own
        disks, logs, namespace and, from Standby, snapshot.  `target_state`: Running,
        Standby or Stopped (default: the source's state)."""
        return InstanceInfo.of(*self._call(fork.fork, ref, name, home=self.home,
                                           from_running=from_running, target=target_state))

    def template_create(self, name: str, *, volume_slots: int = 0, rebuild: bool = False,
                        shared_memory: bool = True, **opts) -> template.Template:
        """`kindling template create NAME`: `opts` are create's image and VM options
        (rootfs, base, image, kernel, memory, cpus, accel, agent, net, ...); clones:
        create(..., template=NAME)."""
        made = options.make(options.CreateOptions, opts, self.home)
        return self._call(template.create, name, made, self.home, volume_slots=volume_slots,
                          rebuild=rebuild, shared_memory=shared_memory)

    def template_list(self) -> list[template.Template]:
        return template.list_all(self.home)

    def template_rm(self, name: str) -> None:
        template.remove(self.home, name)

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

    def wait_at_most(self, ref: str, state: str | State, timeout: float) -> tuple[InstanceInfo, bool]:
        """wait, but for at most `timeout` seconds and never stopping the VM (a client's
        deadline is not the boot deadline): (the instance, whether the time ran out)."""
        target = State(str(state).capitalize()) if not isinstance(state, State) else state
        api_args.seconds("timeout", timeout)
        instance = self._resolve(ref)

        async def bounded():
            with trio.move_on_after(timeout):
                return await lifecycle.wait(instance, target, timeout=math.inf)
            return None

        meta = self._call(bounded)
        if meta is None:
            return self.inspect(ref), True
        return InstanceInfo.of(instance, meta), False

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

    def copy_in(self, ref: str, local: str | Path, remote: str, *,
                timeout: float | None = None) -> CopyResult:
        """Copy a local file or tree so that it becomes `remote` (absolute) in the guest;
        modes, mtimes and symlinks are kept.  A CopyResult: entries, bytes, skipped.
        `timeout` (seconds): TimedOut if the copy is not done by then."""
        local = api_args.host_path("local", local)
        remote = api_args.guest_path("remote", remote)
        return self._bounded(f"cp {local} {ref}:{remote}", timeout,
                             agent_ops.copy_in, ref, local, remote, self.home)

    def copy_out(self, ref: str, remote: str, local: str | Path, *,
                 timeout: float | None = None) -> CopyResult:
        """Copy the guest's file or tree `remote` so that it becomes `local` on the host
        (names with '..', writes through symlinks and setuid bits are refused/dropped).
        `timeout` (seconds): TimedOut if the copy is not done by then."""
        remote = api_args.guest_path("remote", remote)
        local = api_args.host_path("local", local)
        return self._bounded(f"cp {ref}:{remote} {local}", timeout,
                             agent_ops.copy_out, ref, remote, local, self.home)

    def _bounded(self, what: str, timeout: float | None, fn, *args):
        """_call(fn, *args), cancelled after `timeout` seconds (None: no bound) with a
        TimedOut naming `what`."""
        if api_args.seconds("timeout", timeout) is None:
            return self._call(fn, *args)

        async def bounded():
            try:
                with trio.fail_after(timeout):
                    return await fn(*args)
            except trio.TooSlowError:
                raise TimedOut(f"{what}: not done after {timeout:g} s") from None
        return self._call(bounded)

    def cp(self, src: str | Path, dst: str | Path) -> CopyResult:
        """`kindling cp`: exactly one of src and dst is "VM:/path"."""
        src, dst = api_args.host_path("src", src), api_args.host_path("dst", dst)
        return self._call(agent_ops.copy, src, dst, self.home)

    def stat(self, ref: str, path: str, *, follow: bool = False) -> StatResult:
        """What `path` is in the guest: a StatResult (exists, type, mode, size, uid, gid,
        mtime_ns, target); `exists` is False when there is nothing there.  With `follow`,
        a symlink is followed (stat, not lstat)."""
        path = api_args.guest_path("path", path)
        return self._call(agent_ops.stat_path, ref, path, self.home, follow=bool(follow))

    # --- volumes ---------------------------------------------------------------

    def volume_create(self, name: str, size: int | str) -> volumes.VolumeInfo:
        """An empty ext4 volume $KINDLING_HOME/volumes/NAME.img of `size` bytes (an int,
        or a str such as "64M"); attach it with create(..., volumes=["NAME:/path"])."""
        if not isinstance(name, str):
            die(f"name: expected a volume name (str), got {name!r}")
        return volumes.create(self.home, name, api_args.size(size))

    def volume_list(self) -> list[volumes.VolumeInfo]:
        """The named volumes (name, path, size, used_by), by name."""
        return volumes.list_volumes(self.home)

    def volume_rm(self, name: str) -> volumes.VolumeInfo:
        """Delete a named volume; refused while an instance uses it."""
        if not isinstance(name, str):
            die(f"name: expected a volume name (str), got {name!r}")
        return volumes.remove(self.home, name)

    # --- OCI images (host_shim/images.py) ---------------------------------------

    def image_pull(self, ref: str, *, insecure_registries=(), platform: str | None = None,
                   cert_dir: str | Path | None = None, creds: str | None = None,
                   authfile: str | Path | None = None) -> dict:
        """Pull `ref` from its registry into the image store (`kindling image pull`);
        `insecure_registries`: hosts reached over plain http; `cert_dir`: CA certificates
        to trust; `creds` USER:PASS or `authfile` (containers-auth.json)."""
        return images.describe(images.pull(ref, insecure=tuple(insecure_registries),
                                           cert_dir=cert_dir, creds=creds, authfile=authfile,
                                           platform=platform, home=self.home))

    def image_import(self, source: str | Path, *, name: str | None = None,
                     platform: str | None = None) -> dict:
        """An OCI layout directory, OCI archive or docker-archive into the store as `name`."""
        return images.describe(images.import_image(source, name=name, platform=platform))

    def image_list(self) -> list[dict]:
        return [images.describe(i) for i in images.list_images()]

    def image_inspect(self, ref: str) -> dict:
        return images.describe(images.inspect(ref))

    def image_rm(self, ref: str) -> dict:
        """Remove the name `ref`, its rootfs and the blobs no other image uses."""
        return images.describe(images.remove(ref))

    # --- run -------------------------------------------------------------------

    def run(self, command=(), **opts) -> RunResult:
        """`kindling run`: create an instance, stream its program to the end, stop and
        remove it (unless `keep`).  The keywords are run's options (create's, and
        timeout, boot_timeout, keep, verbose).  Returns the program's exit code and
        output; a guest that fails to boot, or a `timeout` (seconds) reached first,
        raises a KindlingError.  Call it from the main thread (it handles SIGINT/SIGTERM
        as the CLI does).  The options:

"""
        values = options.make(options.RunOptions, dict(opts, command=command), self.home)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = self._call(runner.run_async, values, self.home)
        return RunResult(code, out.getvalue(), err.getvalue())

    run.__signature__ = options.signature(
        "run", first=(Parameter("self", Parameter.POSITIONAL_ONLY),))
    run.__doc__ += options.api_doc("run")


async def _feed(fn: Callable[[bytes], None], data: bytes) -> None:
    fn(data)
