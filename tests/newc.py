"""A tiny, independent reader of newc cpio archives and of Kindling's initrd layout:
plain (uncompressed) archives first -- the kernel-headers segment -- then the main
archive, compressed (image_build/initrd.py)."""

import subprocess
from pathlib import Path

MAGIC = b"070701"


def read_archive(data: bytes, off: int = 0) -> tuple[list[dict], int]:
    """The entries of the archive at `off`, and the offset just after its trailer."""
    entries = []
    while True:
        head = data[off:off + 110]
        assert head[:6] == MAGIC, f"bad magic at offset {off}: {head[:6]!r}"
        f = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, _maj, _min, rmaj, rmin, namesize, check = f
        name = data[off + 110:off + 110 + namesize - 1].decode("utf-8", "surrogateescape")
        assert data[off + 110 + namesize - 1] == 0
        off = (off + 110 + namesize + 3) & ~3
        body = data[off:off + size]
        off = (off + size + 3) & ~3
        if name == "TRAILER!!!":
            return entries, off
        entries.append(dict(name=name, ino=ino, mode=mode, uid=uid, gid=gid, nlink=nlink,
                            mtime=mtime, size=size, rdev=(rmaj, rmin), check=check, body=body))


def read_newc(data: bytes) -> list[dict]:
    """Exactly one archive, nothing after its trailer."""
    entries, end = read_archive(data)
    assert end == len(data), "data after the trailer"
    return entries


def decompress(raw: bytes) -> bytes:
    if raw[:2] == b"\x1f\x8b":
        import gzip
        return gzip.decompress(raw)
    if raw[:4] == b"\x02\x21\x4c\x18":  # lz4 legacy
        return subprocess.run(["lz4", "-d", "-c"], input=raw, capture_output=True, check=True).stdout
    if raw[:4] == b"\x28\xb5\x2f\xfd":  # zstd
        return subprocess.run(["zstd", "-d", "-c"], input=raw, capture_output=True, check=True).stdout
    return raw


HEADERS_TREE = ("usr", "usr/lib", "usr/lib/kindling", "usr/lib/kindling/headers")


def split_initrd(raw: bytes) -> tuple[list[list[dict]], bytes]:
    """The plain kernel-headers segments at the front of an initrd (archives holding only
    usr/lib/kindling/headers and its parents), and the main archive after them: compressed,
    or plain (`--compression none`)."""
    plain, off = [], 0
    while raw[off:off + 6] == MAGIC:
        entries, end = read_archive(raw, off)
        if not all(e["name"] in HEADERS_TREE or e["name"].startswith(HEADERS_TREE[-1] + "/")
                   for e in entries):
            break
        plain.append(entries)
        off = end
    return plain, raw[off:]


def initrd_entries(path: Path) -> dict[str, dict]:
    """Every entry of every segment, by name; a later entry replaces an earlier one, as in the kernel."""
    plain, rest = split_initrd(Path(path).read_bytes())
    by_name = {}
    for entries in plain + ([read_newc(decompress(rest))] if rest else []):
        by_name.update((e["name"], e) for e in entries)
    return by_name
