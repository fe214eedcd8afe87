"""Checks for the Python API's arguments: a wrong type or value gets a KindlingError
naming the argument and what was expected, before any VM is touched.

(argparse does this for the CLI; Python callers pass objects, so these check types too.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from . import sizes, volumes
from .errors import die


def argv(value, what: str = "argv") -> list[str]:
    """A non-empty list (or tuple) of str: the command and its arguments."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        die(f"{what}: expected a list of arguments such as ['ls', '-l'], got {value!r}")
    if not value:
        die(f"{what}: expected a command, got an empty list")
    for item in value:
        if not isinstance(item, str):
            die(f"{what}: every argument must be a str, got {item!r}")
    return list(value)


def env(value) -> dict[str, str] | None:
    """None, or a mapping of NAME (non-empty, no '=') to a str value."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        die(f"env: expected a dict of NAME to value, got {value!r}")
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key:
            die(f"env: {key!r} is not a variable name (a non-empty str without '=')")
        if not isinstance(item, str):
            die(f"env[{key!r}]: expected a str, got {item!r}")
    return dict(value)


def seconds(name: str, value) -> float | None:
    """None, or a positive number of seconds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        die(f"{name}: expected a positive number of seconds, got {value!r}")
    return float(value)


def user(value) -> int | str | None:
    """None, a uid (int >= 0), or a user name / "UID[:GID]" str."""
    if value is None or (isinstance(value, str) and value):
        return int(value) if isinstance(value, str) and value.isdigit() else value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    die(f"user: expected a uid (int >= 0) or a name or 'UID[:GID]' str, got {value!r}")


def data(value) -> bytes | None:
    """None, or the bytes to send to a command's stdin (str is sent as UTF-8)."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    die(f"stdin: expected bytes or str, got {type(value).__name__}")


def callback(name: str, value) -> Callable | None:
    if value is not None and not callable(value):
        die(f"{name}: expected a function (or None), got {value!r}")
    return value


def guest_path(name: str, value) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        die(f"{name}: expected an absolute path in the guest (e.g. '/etc/hostname'), got {value!r}")
    return value


def host_path(name: str, value) -> str:
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        die(f"{name}: expected a local path (str or pathlib.Path), got {value!r}")
    return os.fspath(value)


def size(value) -> int:
    """Bytes: a positive int, or a str with a unit such as "64M" (sizes.parse_size)."""
    return sizes.parse_size(value, "size")
