"""Advisory file locks (flock) between the shim processes that touch one instance.

Two locks per instance, always taken in this order when both are needed:

1. `meta.lock`, exclusive: read-modify-write of metadata.json together with the
   VMM probe it is based on, so observations are recorded in the order they
   were made;
2. `logs.lock`: exclusive while the serial log is rotated, shared while log
   files are listed and opened, so a reader never sees a half-done rotation.

Locks are held for milliseconds.  Waiting polls with LOCK_NB (no thread, no
blocked event loop) up to a timeout given at the call site.
"""

import errno
import fcntl
import os
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import trio

from .errors import die

POLL = 0.005


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        die(f"cannot lock {path}: its directory is gone (was the instance deleted?)")
    except OSError as e:
        die(f"cannot open lock file {path}: {e.strerror}")


def _try(fd: int, shared: bool) -> bool:
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise


def _timeout(path: Path, timeout: float):
    die(f"timed out after {timeout:g} s waiting for the lock {path}",
        hint="another kindling process holds it; if none is running, delete the file")


@contextmanager
def locked(path: Path, *, shared: bool = False, timeout: float):
    fd = _open(path)
    try:
        deadline = time.monotonic() + timeout
        while not _try(fd, shared):
            if time.monotonic() > deadline:
                _timeout(path, timeout)
            time.sleep(POLL)
        yield
    finally:
        os.close(fd)   # releases the lock


@asynccontextmanager
async def alocked(path: Path, *, shared: bool = False, timeout: float):
    fd = _open(path)
    try:
        deadline = trio.current_time() + timeout
        while not _try(fd, shared):
            if trio.current_time() > deadline:
                _timeout(path, timeout)
            await trio.sleep(POLL)
        yield
    finally:
        os.close(fd)
