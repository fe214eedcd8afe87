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
