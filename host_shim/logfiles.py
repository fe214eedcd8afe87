"""The serial log on disk: rotation by size, and following it across rotations.

Who writes `logs/app.log`: QEMU itself, through its `file` chardev in append
mode.  That is what lets `kindling create` return while the VM keeps running: no
shim process has to stay behind to copy the console anywhere.

How it is rotated without losing a byte or leaving a hole.  The alternatives:

* copy + truncate (logrotate's copytruncate): whatever QEMU writes between the
  copy and the truncate is lost -- a marker can vanish.  Rejected.
* QEMU writes into a pipe or socket that a per-instance pump process drains and
  rotates: correct, but one more long-lived process per VM that must never die
  (if it does, QEMU's console blocks or drops).  Rejected.
* rename + ask QEMU to reopen: QMP `chardev-change` swaps the backend of the
  console chardev at runtime.  The serial device writes under QEMU's big lock,
  as do QMP commands, so every byte goes either to the old file or to the new one.

Kindling does the last, under the instance's logs.lock (exclusive):

1. `chardev-change con -> logs/app.log.new` (QEMU now appends there; app.log is complete);
2. if the oldest kept copy is about to be deleted, scan all fresh logs for markers
   first (returned to the caller, who persists them: rotation never loses a marker);
3. shift `app.log.N -> app.log.N+1` (dropping beyond `keep`), `app.log -> app.log.1`;
4. rename `app.log.new -> app.log`.

If step 1 fails nothing has changed.  Readers take logs.lock shared while they list
and open files, so they never see a half-done rotation.  The log is cut at an
arbitrary byte: a line may start in `app.log.1` and end in `app.log` (markers.py
joins it).  Rotation is checked whenever a shim process observes the instance
(list, inspect, wait, logs -f and run check it at least once a second), so the
size limit is approximate while no kindling process looks at an instance.

At `start` (a new boot of a stopped instance) the old log is rotated away before
QEMU starts, so the new boot begins with an empty `app.log` whose mtime, on the
filesystem's own clock, is the boot's `log_since`.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import trio

from initsys.protocol import Marker

from . import locks, markers, qmp
from .instance import LOCK_TIMEOUT, Instance
from .console import LineSplitter
from .markers import APP_LOG

DEFAULT_MAX_BYTES = 4 << 20
DEFAULT_KEEP = 3
MIN_MAX_BYTES = 4096
CONSOLE_CHARDEV = "con"       # the chardev id host_shim/qemu.py gives the console
CHARDEV_CHANGE_TIMEOUT = 30.0
NEW_LOG = APP_LOG + ".new"

_READ_SIZE = 1 << 16


def _rotated(log_dir: Path, n: int) -> Path:
    return log_dir / (APP_LOG if n == 0 else f"{APP_LOG}.{n}")


def _shift(log_dir: Path, keep: int) -> None:
    """app.log.N -> app.log.N+1 for N = keep-1 .. 0, dropping app.log.keep and beyond."""
    for path in markers.app_logs_newest_first(log_dir):
        if markers.rotated_index(path.name) >= keep:
            path.unlink(missing_ok=True)
    for n in range(keep - 1, -1, -1):
        src = _rotated(log_dir, n)
        if src.exists():
            os.rename(src, _rotated(log_dir, n + 1))


def start_fresh_log(instance: Instance, keep: int) -> int:
    """Before a boot (QEMU not running): move the old log away, create an empty app.log.
    Returns its mtime: log files last modified before it belong to earlier boots."""
    with locks.locked(instance.logs_lock, timeout=LOCK_TIMEOUT):
        instance.logs_dir.mkdir(parents=True, exist_ok=True)
        (instance.logs_dir / NEW_LOG).unlink(missing_ok=True)
        if instance.app_log.exists() and instance.app_log.stat().st_size > 0:
            _shift(instance.logs_dir, keep)
        fd = os.open(instance.app_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            return os.fstat(fd).st_mtime_ns
        finally:
            os.close(fd)


async def rotate_if_needed(instance: Instance, *, max_bytes: int, keep: int,
                           since_ns: int | None) -> list[Marker] | None:
    """Rotate the live log if it has reached `max_bytes` (QEMU must be running).

    Returns None when nothing was rotated, else the markers of all fresh logs when
    a file had to be deleted (so the caller persists them), or [].
    """
    async with locks.alocked(instance.logs_lock, timeout=LOCK_TIMEOUT):
        try:
            size = instance.app_log.stat().st_size
        except FileNotFoundError:
            return None
        if size < max_bytes:
            return None
        new = instance.logs_dir / NEW_LOG
        new.unlink(missing_ok=True)
        try:
            with trio.fail_after(CHARDEV_CHANGE_TIMEOUT):
                await qmp.execute(instance.qmp_socket, "chardev-change", {
                    "id": CONSOLE_CHARDEV,
                    "backend": {"type": "file", "data": {"out": os.fspath(new), "append": True}},
                })
        except (qmp.QMPError, trio.TooSlowError):
            # QEMU kept its old file: nothing changed.  (After a timeout QEMU may still
            # switch later; app.log.new is then left for the next rotation to unlink.)
            return None
        rescued: list[Marker] = []
        if _rotated(instance.logs_dir, keep).exists():
            rescued = markers.scan_logs(instance.logs_dir, since_ns)
        _shift(instance.logs_dir, keep)
        os.rename(new, instance.app_log)
        return rescued


# --- following ---------------------------------------------------------------

@dataclass
class _Open:
    fd: int
    ino: int


class LogFollower:
    """Reads an instance's serial log of the current boot from its first byte, across
    rotations.  `poll()` returns what is there now; follow.ConsoleFollower, the one
    follower every reader uses, decides how often."""

    def __init__(self, instance: Instance, since_ns: int | None):
        self.instance = instance
        self.since_ns = since_ns
        self.splitter = LineSplitter()
        self.pending: list[_Open] = []     # older files still to read, then the current one
        self.current: _Open | None = None
        self.gaps = 0                      # rotated files deleted before they were read
        self.bytes_read = 0

    def _open(self, path: Path) -> _Open | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        return _Open(fd, os.fstat(fd).st_ino)

    async def _open_chain(self, after_ino: int | None) -> None:
        """Open the files newer than the one with inode `after_ino` (all fresh files when
        None), oldest first, under the shared logs lock."""
        async with locks.alocked(self.instance.logs_lock, shared=True, timeout=LOCK_TIMEOUT):
            paths = markers.fresh_logs(self.instance.logs_dir, self.since_ns)
            if after_ino is not None:
                inodes = []
                for p in paths:
                    try:
                        inodes.append(p.stat().st_ino)
                    except FileNotFoundError:
                        inodes.append(None)
                if after_ino in inodes:
                    paths = paths[:inodes.index(after_ino)]
                else:
                    self.gaps += 1
            for path in reversed(paths):
                opened = self._open(path)
                if opened is not None:
                    self.pending.append(opened)
        if self.pending:
            self.current = self.pending.pop(0)

    def _read(self, opened: _Open) -> bytes:
        chunks = []
        while True:
            data = os.read(opened.fd, _READ_SIZE)
            if not data:
                return b"".join(chunks)
            chunks.append(data)

    def _rotated_away(self) -> bool:
        try:
            return os.stat(self.instance.app_log).st_ino != self.current.ino
        except FileNotFoundError:
            return True     # mid-rotation (or deleted): the lock tells

    async def poll(self) -> list[str]:
        """The complete lines that arrived since the last call."""
        if self.current is None:
            await self._open_chain(None)
            if self.current is None:
                return []
        data = []
        while True:
            data.append(self._read(self.current))
            if self.pending:
                os.close(self.current.fd)
                self.current = self.pending.pop(0)
                continue
            if not self._rotated_away():
                break
            # Rotated: once the lock is ours the rotation is complete and QEMU writes
            # elsewhere, so reading this file to its end gets all of it.
            async with locks.alocked(self.instance.logs_lock, shared=True,
                                     timeout=LOCK_TIMEOUT):
                data.append(self._read(self.current))
            old = self.current
            self.current = None
            await self._open_chain(old.ino)
            os.close(old.fd)
            if self.current is None:
                break
        raw = b"".join(data)
        self.bytes_read += len(raw)
        return self.splitter.feed(raw)

    def flush(self) -> list[str]:
        return self.splitter.flush()

    def close(self) -> None:
        for opened in ([self.current] if self.current else []) + self.pending:
            try:
                os.close(opened.fd)
            except OSError:
                pass
        self.current = None
        self.pending = []
