"""exec, cp and stat on an instance: the guard (Running only), then the agent client.

The agent listens on the instance's virtio-serial port, which QEMU exposes on
the host as the unix socket `agent.sock` in the instance folder.
"""

import os
import sys

import trio

from . import lifecycle, metadata
from .agent_client import AgentError, open_agent
from .errors import die
from .instance import kindling_home
from .state import State, require_running

CONNECT_TIMEOUT = 15.0


async def _running(ref: str, operation: str, home=None, started=None):
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


async def _write(fd: int, data: bytes) -> None:  # blocking is fine for a CLI's stdout
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


async def exec_command(ref: str, argv: list[str], *, env=None, cwd=None, user=None, tty=False,
                       interactive=False, timeout=None, home=None, started=None,
                       stdout=None, stderr=None) -> int:
    """Run argv in the guest, streaming its output to ours (or to the async callables
    `stdout`/`stderr`, given bytes); returns its exit code (124 when the timeout killed
    it, 128+N when a signal did).  `started(instance, meta)` is told the instance once
    it has been looked at (`exec --json` prints its state event)."""
    instance = await _running(ref, "exec", home, started)
    rows, cols = 24, 80
    if tty:
        try:
            cols, rows = os.get_terminal_size(sys.stdout.fileno())
        except OSError:
            pass

    async def stdin_chunks():
        stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        async with stream:
            while chunk := await stream.receive_some(65536):
                yield chunk

    async with open_agent(instance.agent_socket, timeout=CONNECT_TIMEOUT) as client:
        result = await client.exec(
            argv, env=env, cwd=cwd, user=user, tty=tty, rows=rows, cols=cols, timeout=timeout,
            stdin=stdin_chunks() if interactive else None,
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


async def copy(src: str, dst: str, home=None) -> str:
    (svm, spath), (dvm, dpath) = split_remote(src), split_remote(dst)
    if (svm is None) == (dvm is None):
        die("cp: exactly one of SRC and DST must be VM:/path", hint="kindling cp ./local VM:/path, or kindling cp VM:/path ./local")
    ref = svm or dvm
    instance = await _running(ref, "cp", home)
    async with open_agent(instance.agent_socket, timeout=CONNECT_TIMEOUT) as client:
        try:
            if dvm is not None:
                if not os.path.lexists(spath):
                    die(f"cp: {spath}: no such file or directory")
                result = await client.copy_to(spath, dpath)
            else:
                result = await client.copy_from(spath, dpath)
        except AgentError as e:
            die(f"cp {src} {dst}: {e}")
    return result


async def stat(target: str, home=None):
    ref, path = split_remote(target)
    if ref is None:
        die(f"stat: expected VM:/path, got {target!r}", hint="kindling stat VM:/path")
    instance = await _running(ref, "stat", home)
    async with open_agent(instance.agent_socket, timeout=CONNECT_TIMEOUT) as client:
        return await client.stat(path)


__all__ = ["State", "copy", "exec_command", "split_remote", "stat"]
