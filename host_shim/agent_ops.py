"""exec, cp and stat on an instance: the guard (Running only), then the agent client.

The one implementation below both `kindling exec/cp/stat` (host_shim/cli.py) and
the Python API (host_shim/api.py) use: `run_exec`, `copy_in`, `copy_out`,
`stat_path` take an instance reference and return the agent client's typed
results; `exec_command`, `copy` and `stat` are the CLI's forms of them.

The agent listens on the instance's virtio-serial port, which QEMU exposes on
the host as the unix socket `agent.sock` in the instance folder.
"""

import contextlib
import os
import sys
from collections.abc import AsyncIterable, Awaitable, Callable

import trio

from . import lifecycle, metadata
from .agent_client import (AgentError, ConnectionLost, CopyResult, ExecResult, StatResult, agent_error_in,
                           open_agent)
from .errors import die
from .instance import Instance, kindling_home
from .state import State, require_running

CONNECT_TIMEOUT = 15.0

Sink = Callable[[bytes], Awaitable[None]]


async def _running(ref: str, operation: str, home=None, started=None) -> Instance:
    """The Running instance `ref`; `started(instance, meta)` is told it once it has been
    looked at (`exec --json` prints its state event)."""
    instance = metadata.resolve(home or kindling_home(), ref)[0]
    meta = await lifecycle.observe(instance)
    if started is not None:
        started(instance, meta)
    require_running(ref, meta.state, operation)
    if meta.agent_skipped:
        die(f"instance {ref} runs without an agent (--agent none)", hint=f"{operation} needs the agent")
    if not instance.agent_socket.exists():
        die(f"instance {ref} has no agent socket ({instance.agent_socket})",
            hint="it was created with --agent vsock or none; exec over vsock needs vhost-vsock")
    return instance


@contextlib.asynccontextmanager
async def _agent(instance: Instance):
    """A connection to the instance's agent.  A connection lost because QEMU ended (a
    standby, a stop, the guest powering off) says so, with the state it is now in."""
    try:
        async with open_agent(instance.agent_socket, timeout=CONNECT_TIMEOUT) as client:
            yield client
    except (AgentError, BaseExceptionGroup) as caught:
        e = agent_error_in(caught)
        if e is None or (type(e) is not AgentError and not isinstance(e, ConnectionLost)):
            raise                           # the agent's answer, or not about the connection
        meta = await lifecycle.observe(instance)   # waits for a standby or restore to finish
        if meta.state in (State.RUNNING, State.INITIALIZING):
            raise
        raise AgentError(f"{e.message}: the instance stopped running while the session was open "
                         f"(instance {meta.name} is now {meta.state})", hint=e.hint) from None


async def run_exec(ref: str, argv: list[str], *, env=None, cwd=None, user=None, tty=False,
                   rows: int = 24, cols: int = 80, stdin: bytes | AsyncIterable[bytes] | None = None,
                   stdout: Sink | None = None, stderr: Sink | None = None, timeout=None,
                   home=None, started=None) -> ExecResult:
    """Run argv in the Running instance `ref` through its agent.  stdout/stderr: None to
    capture into the result, or an async callable given each chunk.  The result's code
    is 124 when the timeout killed it, 128+N when signal N did, 126/127 (with .error)
    when it could not start."""
    instance = await _running(ref, "exec", home, started)
    async with _agent(instance) as client:
        return await client.exec(argv, env=env, cwd=cwd, user=user, tty=tty, rows=rows,
                                 cols=cols, timeout=timeout, stdin=stdin, stdout=stdout,
                                 stderr=stderr)


async def _write(fd: int, data: bytes) -> None:  # blocking is fine for a CLI's stdout
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


async def _our_stdin():
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stream:
        while chunk := await stream.receive_some(65536):
            yield chunk


async def exec_command(ref: str, argv: list[str], *, env=None, cwd=None, user=None, tty=False,
                       interactive=False, timeout=None, home=None, started=None,
                       stdout=None, stderr=None) -> int:
    """`kindling exec`: run_exec streaming to our stdout/stderr or to the async callables
    `stdout`/`stderr` (and from our stdin with `interactive`); returns the command's exit
    code."""
    rows, cols = 24, 80
    if tty:
        try:
            cols, rows = os.get_terminal_size(sys.stdout.fileno())
        except OSError:
            pass
    result = await run_exec(ref, argv, env=env, cwd=cwd, user=user, tty=tty, rows=rows,
                            cols=cols, timeout=timeout, home=home, started=started,
                            stdin=_our_stdin() if interactive else None,
                            stdout=stdout or (lambda data: _write(1, data)),
                            stderr=stderr or (lambda data: _write(2, data)))
    if result.error:  # could not start: code is 127 or 126
        print(f"kindling: exec {argv[0]}: {result.error}", file=sys.stderr, flush=True)
    return result.code  # the agent reports 124 for a timeout, 128+N for signal N


def split_remote(text: str) -> tuple[str | None, str]:
    """`VM:/path` -> (VM, /path); a local path -> (None, path)."""
    head, sep, tail = text.partition(":")
    if sep and tail.startswith("/") and "/" not in head and head:
        return head, tail
    return None, text


async def _copy(ref: str, operation: str, src: str, dst: str, shown: str, home=None) -> CopyResult:
    """client.copy_to / copy_from (src, dst) on the Running instance `ref`; agent errors
    are named by `shown` (`cp SRC DST` as the user would write it)."""
    instance = await _running(ref, "cp", home)
    async with _agent(instance) as client:
        try:
            return await getattr(client, operation)(src, dst)
        except AgentError as e:
            die(f"{shown}: {e}")


async def copy_in(ref: str, local: str | os.PathLike, remote: str, home=None) -> CopyResult:
    """Copy the local file or tree `local` so that it becomes `remote` in the guest."""
    local = os.fspath(local)
    if not os.path.lexists(local):
        die(f"cp: {local}: no such file or directory")
    return await _copy(ref, "copy_to", local, remote, f"cp {local} {ref}:{remote}", home=home)


async def copy_out(ref: str, remote: str, local: str | os.PathLike, home=None) -> CopyResult:
    """Copy the guest's file or tree `remote` so that it becomes `local` on the host."""
    local = os.fspath(local)
    return await _copy(ref, "copy_from", remote, local, f"cp {ref}:{remote} {local}", home=home)


async def copy(src: str, dst: str, home=None) -> CopyResult:
    """`kindling cp SRC DST`: exactly one of them is VM:/path."""
    (svm, spath), (dvm, dpath) = split_remote(src), split_remote(dst)
    if (svm is None) == (dvm is None):
        die(f"cp {src} {dst}: exactly one of SRC and DST must be VM:/path")
    if dvm is not None:
        return await copy_in(dvm, spath, dpath, home)
    return await copy_out(svm, spath, dpath, home)


async def stat_path(ref: str, path: str, home=None, *, follow: bool = False) -> StatResult:
    """What `path` is in the guest (StatResult.exists False when there is nothing); with
    `follow`, what a symlink there points to (stat rather than lstat)."""
    instance = await _running(ref, "stat", home)
    async with _agent(instance) as client:
        return await client.stat(path, follow=follow)


async def stat(target: str, home=None) -> StatResult:
    """`kindling stat VM:/path`."""
    ref, path = split_remote(target)
    if ref is None:
        die(f"stat: expected VM:/path, got {target!r}")
    return await stat_path(ref, path, home)


__all__ = ["State", "copy", "copy_in", "copy_out", "exec_command", "run_exec", "split_remote",
           "stat", "stat_path"]
