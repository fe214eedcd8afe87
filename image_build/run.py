"""The one place image_build starts other programs.

Every call passes an argv list (never a shell string) and a timeout.  stdin is
/dev/null; stdout and stderr are captured so that a failure can be reported
with the exact command and the tail of what it printed.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

from image_build.errors import BuildError

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
}

_TAIL_LINES = 25


def command_line(argv: Sequence[str | os.PathLike]) -> str:
    """The command as one copy-pasteable line (for messages only)."""
    return shlex.join(str(a) for a in argv)


def _tail(text: str | None) -> str:
    if not text:
        return ""
    lines = text.rstrip().splitlines()
    if len(lines) > _TAIL_LINES:
        lines = ["..."] + lines[-_TAIL_LINES:]
    return "\n".join("    " + line for line in lines)


def run(
    argv: Sequence[str | os.PathLike],
    *,
    timeout: float,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    capture: bool = False,
) -> subprocess.CompletedProcess:
    """Run argv and wait at most `timeout` seconds.

    `env`, if given, is laid over the current environment.  With
    capture=True the returned CompletedProcess has .stdout as text (and
    .stderr); otherwise the output is kept only for error messages.
    Raises BuildError on a missing program, a non-zero exit, a signal or a
    timeout.
    """
    argv = [os.fspath(a) for a in argv]
    if not argv:
        raise ValueError("run() needs a non-empty argv")
    cmd = command_line(argv)
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=full_env,
            timeout=timeout,
            text=True,
            errors="surrogateescape",
        )
    except FileNotFoundError as e:
        if cwd is not None and not Path(cwd).is_dir():
            raise BuildError(f"cannot run `{cmd}`: working directory {cwd} does not exist") from None
        prog = Path(argv[0]).name
        hint = APT_HINTS.get(prog)
        msg = f"cannot run `{cmd}`: program {argv[0]!r} not found"
        if hint:
            msg += f" (install it with: apt-get install {hint})"
        raise BuildError(msg) from e
    except PermissionError as e:
        raise BuildError(f"cannot run `{cmd}`: {e}") from None
    except subprocess.TimeoutExpired as e:
        out = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        raise BuildError(
            f"command timed out after {timeout:g} s and was killed: `{cmd}`"
            + (f"\n{_tail(out)}" if out else "")
        ) from None
    if proc.returncode != 0:
        if proc.returncode < 0:
            sig = -proc.returncode
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = "?"
            status = f"killed by signal {sig} ({name})"
        else:
            status = f"exit status {proc.returncode}"
        detail = _tail(proc.stderr) or _tail(proc.stdout)
        raise BuildError(
            f"command failed with {status}: `{cmd}`" + (f"\n{detail}" if detail else "")
        )
    if not capture:
        proc.stdout = None
    return proc
