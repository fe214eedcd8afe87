"""A small, deterministic writer for the newc ("070701") cpio format.

The kernel's initramfs unpacker reads this format.  Every entry gets uid/gid
0, mtime 0, nlink 1 and a sequential inode number; entries are written in
byte order of their names (like `LC_ALL=C sort`), so the same tree always
gives the same bytes.  Regular files, directories, symlinks and character
device nodes are supported -- device nodes need no root, as they are only
written into the archive.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One archive member.  `name` is relative, without a leading slash."""

    name: str
    mode: int                      # including the S_IFMT type bits
    source: Path | None = None     # regular files: where the data comes from
    data: bytes | None = None      # regular files: or the data itself
    target: str | None = None      # symlinks
    rdev: tuple[int, int] = (0, 0)  # character devices: (major, minor)

    @property
    def sort_key(self) -> bytes:
        return self.name.encode("utf-8", "surrogateescape")


def file(name: str, source: Path, perm: int = 0o644) -> Entry:
    return Entry(_clean(name), stat.S_IFREG | perm, source=Path(source))


def data(name: str, content: bytes, perm: int = 0o644) -> Entry:
    return Entry(_clean(name), stat.S_IFREG | perm, data=bytes(content))


def directory(name: str, perm: int = 0o755) -> Entry:
    return Entry(_clean(name), stat.S_IFDIR | perm)


def symlink(name: str, target: str) -> Entry:
    return Entry(_clean(name), stat.S_IFLNK | 0o777, target=target)


def chardev(name: str, major: int, minor: int, perm: int = 0o666) -> Entry:
    return Entry(_clean(name), stat.S_IFCHR | perm, rdev=(major, minor))


def _clean(name: str) -> str:
    name = name.strip("/")
    if not name or name in (".", "..") or any(p in ("", ".", "..") for p in name.split("/")):
        raise ValueError(f"bad cpio member name: {name!r}")
    return name


def entries_from_tree(root: Path) -> list[Entry]:
    """Entries for everything under `root` (not root itself); file modes are
    kept, owners and times are not."""
    out: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            st = os.lstat(p)
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out.append(symlink(rel, os.readlink(p)))
            elif stat.S_ISDIR(st.st_mode):
                out.append(directory(rel, perm))
            elif stat.S_ISREG(st.st_mode):
                out.append(file(rel, p, perm))
            else:
                raise ValueError(f"{p}: unsupported file type for the initrd (mode {oct(st.st_mode)})")
    return out


def _header(ino: int, mode: int, size: int, rdev: tuple[int, int], namesize: int) -> bytes:
    fields = (ino, mode, 0, 0, 1, 0, size, 0, 0, rdev[0], rdev[1], namesize, 0)
    return MAGIC + b"".join(b"%08X" % v for v in fields)


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def write(entries: Iterable[Entry], out: BinaryIO) -> int:
    """Write the archive (sorted, with trailer); returns the bytes written."""
    by_name: dict[str, Entry] = {}
    for e in entries:
        if e.name in by_name and by_name[e.name] != e:
            raise ValueError(f"duplicate cpio member {e.name!r}")
        by_name[e.name] = e
    ordered = sorted(by_name.values(), key=lambda e: e.sort_key)
    written = 0
    ino = 0
    for e in ordered:
        ino += 1
        written += _write_one(out, ino, e)
    written += _write_one(out, 0, Entry(TRAILER, 0))
    return written


def _write_one(out: BinaryIO, ino: int, e: Entry) -> int:
    name = e.name.encode("utf-8", "surrogateescape") + b"\0"
    kind = stat.S_IFMT(e.mode)
    payload = b""
    size = 0
    if kind == stat.S_IFLNK:
        payload = e.target.encode("utf-8", "surrogateescape")
        size = len(payload)
    elif kind == stat.S_IFREG:
        if e.data is not None:
            payload = e.data
            size = len(payload)
        elif e.source is not None:
            size = os.stat(e.source).st_size
        else:
            raise ValueError(f"regular file {e.name!r} has neither data nor source")
    head = _header(ino, e.mode, size, e.rdev if kind == stat.S_IFCHR else (0, 0), len(name)) + name
    head += _pad(len(head))
    out.write(head)
    n = len(head)
    if kind == stat.S_IFREG and e.data is None:
        copied = 0
        with open(e.source, "rb") as f:
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                copied += len(chunk)
        if copied != size:
            raise ValueError(f"{e.source} changed size while being archived")
    elif payload:
        out.write(payload)
    out.write(_pad(size))
    return n + size + len(_pad(size))
