"""The one way Kindling's host side runs other programs (image_build and host_shim).

* argv lists only, never a shell string (a str or bytes argv is a TypeError);
* stdin is /dev/null unless the caller passes another;
* every call site states its timeout (`timeout` is a required keyword);
* every failure is a `CommandError` whose message is made by one formatter:
  what went wrong ("not found", "exit code N", "killed by signal N (SIGKILL)",
  "timed out after S s") and the exact command line to paste (`shlex.join`),
  plus the tail of what the command printed.

It lives in image_build because host_shim imports image_build (to build
images) and not the other way round, so both can use it without an import
cycle.  host_shim turns a CommandError into its KindlingError in one place
(host_shim/run.py).  The guest (initsys, agent) runs its children under trio
in the VM and does not use this module; the "killed by signal" wording itself
is the protocol's (initsys.protocol.exit_message), shared with the guest.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import IO, Mapping, Sequence

from image_build.errors import BuildError
from initsys import protocol

DEVNULL = subprocess.DEVNULL
PIPE = subprocess.PIPE

Argv = Sequence[str | os.PathLike]
Redirect = int | IO | None

# Which Debian package provides a program, for "not found" hints.
APT_HINTS = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "depmod": "kmod",
    "modprobe": "kmod",
    "modinfo": "kmod",
    "mkfs.erofs": "erofs-utils",
    "fsck.erofs": "erofs-utils",
    "dump.erofs": "erofs-utils",
    "mkfs.ext4": "e2fsprogs",
    "mke2fs": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "zstd": "zstd",
    "lz4": "lz4",
    "xz": "xz-utils",
    "ldd": "libc-bin",
    "python3.11": "python3.11-minimal",
    "pip": "python3-pip",
    "mmdebstrap": "mmdebstrap",
    "ip": "iproute2",
    "qemu-system-x86_64": "qemu-system-x86",
    "skopeo": "skopeo",
    "umoci": "umoci",
    "docker-registry": "docker-registry",
    "htpasswd": "apache2-utils",
    "openssl": "openssl",
}

_TAIL_LINES = 25


class CommandError(BuildError):
    """A command could not start, failed or timed out.

    `summary` says what happened, `command` is the line to paste, `output` the
    tail of what it printed; str() is all three (the one formatter).
    """

    def __init__(self, summary: str, command: str, output: str = ""):
        self.summary = summary
        self.command = command
        self.output = output
        super().__init__(self.format())

    def details(self) -> str:
        """The command line and the output's tail: what to show under the summary."""
        text = f"the command was: {self.command}"
        return text + (f"\n{self.output}" if self.output else "")

    def format(self) -> str:
        return f"{self.summary}\n{self.details()}"


def command_line(argv: Argv) -> str:
    """The command as one copy-pasteable line (for messages only)."""
    return shlex.join(os.fspath(a) for a in argv)


def describe_returncode(returncode: int) -> str:
    """"exit code N", or "killed by signal N (NAME)" for a negative returncode."""
    code, signum = protocol.exit_code_from_returncode(returncode)
    if signum is not None:
        return protocol.exit_message(code, signum=signum)
    return f"exit code {code}"


def argv_list(argv: Argv) -> list[str]:
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv must be a list of arguments, not a string")
    args = [os.fspath(a) for a in argv]
    if not args:
        raise ValueError("an empty argv")
    return args


def launch_error(argv: list[str], err: OSError, cwd=None) -> CommandError:
    """The error for a command that could not be started at all."""
    cmd = command_line(argv)
    if isinstance(err, FileNotFoundError):
        if cwd is not None and not Path(cwd).is_dir():
            return CommandError(f"working directory {cwd} does not exist", cmd)
        package = APT_HINTS.get(Path(argv[0]).name)
        hint = f" (install it with: apt-get install {package})" if package else ""
        return CommandError(f"{argv[0]}: not found{hint}", cmd)
    if isinstance(err, PermissionError):
        return CommandError(f"{argv[0]}: permission denied (not executable)", cmd)
    return CommandError(f"{argv[0]}: cannot run it: {err.strerror or err}", cmd)


def _tail(text: str | bytes | None) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    if not text:
        return ""
    lines = text.rstrip().splitlines()
    if len(lines) > _TAIL_LINES:
        lines = ["..."] + lines[-_TAIL_LINES:]
    return "\n".join("    " + line for line in lines)


def run(argv: Argv, *, timeout: float, stdin: Redirect = DEVNULL, stdout: Redirect = PIPE,
        stderr: Redirect = PIPE, check: bool = True, env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
        ) -> subprocess.CompletedProcess:
    """Run argv to completion, at most `timeout` seconds (then it is killed).

    Output is text.  By default stdout and stderr are captured (the result has
    them; a failure shows their tail).  `env`, if given, is laid over the current environment.  Raises
    CommandError when it cannot start, times out, or (with check) fails.
    """
    args = argv_list(argv)
    full_env = None if env is None else {**os.environ, **env}
    try:
        proc = subprocess.run(args, stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd,
                              env=full_env, timeout=timeout, text=True, errors="surrogateescape")
    except subprocess.TimeoutExpired as e:
        raise CommandError(f"{args[0]}: timed out after {timeout:g} s and was killed",
                           command_line(args), _tail(e.stderr)) from None
    except OSError as e:
        raise launch_error(args, e, cwd) from None
    if check and proc.returncode != 0:
        raise CommandError(f"{args[0]}: failed with {describe_returncode(proc.returncode)}",
                           command_line(args), _tail(proc.stderr) or _tail(proc.stdout))
    return proc
