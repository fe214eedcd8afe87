"""Running other programs from host_shim: image_build/run.py's helper, with its
errors turned into KindlingError here (the one place), plus what only the host
needs -- background trio processes and the detached VMM.

argv lists only (never a shell string), stdin is /dev/null unless the caller
says otherwise, every call site states its timeout, and a failure message is
made by image_build/run.py's one formatter ("not found", "exit code N",
"killed by signal N (NAME)", and the exact command line to paste).
"""

import os
import signal
import subprocess
from collections.abc import Mapping
from contextlib import contextmanager

import trio

from image_build import run as proc
from image_build.run import Argv, Redirect, command_line as format_command, describe_returncode

from .errors import KindlingError

DEVNULL = subprocess.DEVNULL
PIPE = subprocess.PIPE

__all__ = ["DEVNULL", "PIPE", "describe_returncode", "format_command", "kindling_errors", "run",
           "start", "stop", "spawn_detached", "reap_detached", "wait_detached", "wait_pidfd"]


@contextmanager
def kindling_errors():
    """Turn the helper's CommandError into the KindlingError the CLI reports."""
    try:
        yield
    except proc.CommandError as e:
        raise KindlingError(e.summary, hint=e.details()) from None


def run(argv: Argv, *, timeout: float, stdin: Redirect = DEVNULL, stdout: Redirect = PIPE,
        stderr: Redirect = PIPE, check: bool = True, env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """image_build.run.run, raising KindlingError."""
    with kindling_errors():
        return proc.run(argv, timeout=timeout, stdin=stdin, stdout=stdout, stderr=stderr,
                        check=check, env=env, cwd=cwd)


async def start(argv: Argv, *, stdin: Redirect = DEVNULL, stdout: Redirect = DEVNULL,
                stderr: Redirect = None, env: Mapping[str, str] | None = None,
                start_new_session: bool = False) -> trio.Process:
    """Start a long-running command in the background; the caller waits and stops it."""
    args = proc.argv_list(argv)
    try:
        return await trio.lowlevel.open_process(
            args, stdin=stdin, stdout=stdout, stderr=stderr, env=env,
            start_new_session=start_new_session)
    except OSError as e:
        with kindling_errors():
            raise proc.launch_error(args, e) from None


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
    args = proc.argv_list(argv)
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_DUP2, stdout, 1),
               (os.POSIX_SPAWN_DUP2, stderr, 2)]
    try:
        pid = os.posix_spawnp(args[0], args, os.environ, file_actions=actions, setsid=True,
                              setsigdef=_DEFAULT_SIGNALS, setsigmask=())
    except OSError as e:
        with kindling_errors():
            raise proc.launch_error(args, e) from None
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
