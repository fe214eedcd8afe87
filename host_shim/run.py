"""The one way host_shim runs other programs.

argv lists only (never a shell string), stdin is /dev/null unless the caller
says otherwise, every call site states its timeout, and a failure message shows
the exact command line to paste plus "not found" / "killed by signal N".
"""

import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import IO

import trio

from .errors import die

DEVNULL = subprocess.DEVNULL
PIPE = subprocess.PIPE

Argv = Sequence[str | os.PathLike]
Redirect = int | IO | None


def format_command(argv: Argv) -> str:
    return shlex.join(os.fspath(a) for a in argv)


def describe_returncode(returncode: int) -> str:
    if returncode < 0:
        signum = -returncode
        try:
            name = signal.Signals(signum).name
        except ValueError:
            return f"killed by signal {signum}"
        return f"killed by signal {signum} ({name})"
    return f"exited with status {returncode}"


def _argv(argv: Argv) -> list[str]:
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv must be a list of arguments, not a string")
    return [os.fspath(a) for a in argv]


def _launch_error(argv: list[str], err: OSError):
    if isinstance(err, FileNotFoundError):
        die(f"command not found: {argv[0]}", hint=f"while running: {format_command(argv)}")
    if isinstance(err, PermissionError):
        die(f"permission denied executing {argv[0]}", hint=f"while running: {format_command(argv)}")
    die(f"cannot run {format_command(argv)}: {err.strerror or err}")


def run(argv: Argv, *, timeout: float | None, stdin: Redirect = DEVNULL,
        stdout: Redirect = None, stderr: Redirect = None, check: bool = True,
        env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
        ) -> subprocess.CompletedProcess:
    """Run a command to completion (blocking).  Output is captured as text when PIPE."""
    args = _argv(argv)
    try:
        result = subprocess.run(args, stdin=stdin, stdout=stdout, stderr=stderr,
                                env=env, cwd=cwd, timeout=timeout, text=True)
    except subprocess.TimeoutExpired:
        die(f"command timed out after {timeout:g} s: {format_command(args)}")
    except OSError as e:
        _launch_error(args, e)
    if check and result.returncode != 0:
        message = f"command {describe_returncode(result.returncode)}: {format_command(args)}"
        if isinstance(result.stderr, str) and result.stderr.strip():
            message += "\n" + result.stderr.strip()[-2000:]
        die(message)
    return result


async def start(argv: Argv, *, stdin: Redirect = DEVNULL, stdout: Redirect = DEVNULL,
                stderr: Redirect = None, env: Mapping[str, str] | None = None,
                start_new_session: bool = False) -> trio.Process:
    """Start a long-running command in the background; the caller waits and stops it."""
    args = _argv(argv)
    try:
        return await trio.lowlevel.open_process(
            args, stdin=stdin, stdout=stdout, stderr=stderr, env=env,
            start_new_session=start_new_session)
    except OSError as e:
        _launch_error(args, e)


async def stop(process: trio.Process, *, grace: float) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL; always reaps the process.

    Runs shielded so that it completes even while the caller is being cancelled.
    """
    with trio.CancelScope(shield=True):
        if process.returncode is not None:
            return
        process.terminate()
        with trio.move_on_after(grace):
            await process.wait()
            return
        process.kill()
        await process.wait()


# --- detached processes (the VMM) ---------------------------------------------
#
# A VMM must outlive `kindling create`, so it is not a trio Process tied to this
# process's lifetime: it gets its own session (no terminal signals) and is
# started with posix_spawn.  It is still this process's child until this
# process exits; `reap_detached` collects its exit status (so a long-lived
# library user accumulates no zombies) and `wait_detached` waits for it.

# Signals a Python process ignores (or handles) that the VMM must see at their defaults.
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM,
                    signal.SIGHUP, signal.SIGQUIT)

# pid -> exit status (None while running) of the detached children of this process.
_detached: dict[int, int | None] = {}


def spawn_detached(argv: Argv, *, stdout: int, stderr: int) -> int:
    """Start argv in a new session, stdin /dev/null, stdout/stderr to the given fds; its pid."""
    args = _argv(argv)
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_DUP2, stdout, 1),
               (os.POSIX_SPAWN_DUP2, stderr, 2)]
    try:
        pid = os.posix_spawnp(args[0], args, os.environ, file_actions=actions, setsid=True,
                              setsigdef=_DEFAULT_SIGNALS, setsigmask=())
    except OSError as e:
        _launch_error(args, e)
    _detached[pid] = None
    return pid


def reap_detached(pid: int) -> int | None:
    """The exit status of a detached child of this process (negative: killed by that
    signal), or None while it runs or when it is not our child."""
    if pid not in _detached:
        return None
    if _detached[pid] is None:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            _detached[pid] = os.waitstatus_to_exitcode(status)
    return _detached[pid]


def is_our_child(pid: int) -> bool:
    return pid in _detached


async def wait_detached(pid: int) -> int | None:
    """Wait (event-driven, pidfd) until process `pid` has exited.  Returns its exit status
    when it is a detached child of this process, else None.  Timeouts: at the call site."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return reap_detached(pid)
    try:
        return await wait_pidfd(fd, pid)
    finally:
        os.close(fd)


async def wait_pidfd(pidfd: int, pid: int) -> int | None:
    """Wait until the process behind `pidfd` has exited, all its threads included (a
    pidfd turns readable only then; /proc shows a multi-threaded leader as a zombie
    earlier, before waitpid can collect it).  Its exit status if it is our child."""
    await trio.lowlevel.wait_readable(pidfd)
    return reap_detached(pid)
