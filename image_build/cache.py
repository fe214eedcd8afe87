"""The build cache: where it is, content keys, locking and atomic publishing.

Layout under the cache dir (default `$KINDLING_CACHE` or ~/.cache/kindling):

    debs/                      downloaded .deb files (apt-get download, cwd here)
    kernel/<pkg>_<ver>/        dpkg-deb -x of the kernel package (depmod run in it)
    modules/<key>/             a hard-linked copy of a --modules tree, depmod'ed
    site/<key>/                pip --target install of the pinned guest deps
    busybox/<pkg>_<ver>/       dpkg-deb -x of busybox-static
    debian/<key>/              the Debian base's mmdebstrap tarball + info.json (debian.py)
    kernel-headers/<pkg>_<ver>/  dpkg-deb -x of the linux-headers/linux-kbuild packages
    headers/<key>/             the kernel-headers tarball for the initrd + inputs.json
    initrd/<key>/              a finished initrd + inputs.json
    rootfs/<key>/              a finished rootfs image + inputs.json
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from image_build.errors import BuildError


def default_cache_dir() -> Path:
    env = os.environ.get("KINDLING_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "kindling"


class Hasher:
    """sha256 over typed, length-prefixed fields (so "ab"+"c" != "a"+"bc")."""

    def __init__(self, tag: str = ""):
        self._h = hashlib.sha256()
        self.add("tag", tag)

    def add(self, name: str, value) -> Hasher:
        data = value if isinstance(value, bytes) else json.dumps(value, sort_keys=True).encode()
        for part in (name.encode(), data):
            self._h.update(len(part).to_bytes(8, "little"))
            self._h.update(part)
        return self

    def add_file(self, name: str, path: Path) -> Hasher:
        return self.add(name, file_sha256(path).encode())

    def hexdigest(self, length: int = 24) -> str:
        return self._h.hexdigest()[:length]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stat_fingerprint(path: Path) -> list:
    """Cheap identity of a host file: [size, mtime_ns] (lstat), or None if missing."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns]


def fingerprints(paths: Iterable[Path]) -> dict[str, list]:
    return {str(p): stat_fingerprint(Path(p)) for p in sorted(set(map(str, paths)))}


def fingerprints_unchanged(recorded: dict[str, list]) -> bool:
    return all(stat_fingerprint(Path(p)) == fp for p, fp in recorded.items())


def tree_fingerprint(root: Path) -> str:
    """A hash of a directory tree's metadata (names, types, modes, owners,
    sizes, mtimes, symlink targets) -- cheap even for a large rootfs."""
    h = Hasher("tree")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            link = os.readlink(p) if os.path.islink(p) else None
            h.add(rel, [st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, link])
    return h.hexdigest()


def ensure_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BuildError(f"cannot create directory {path}: {e.strerror}") from None
    return path


@contextlib.contextmanager
def locked(cache_dir: Path):
    """Hold an exclusive lock on the cache dir (concurrent builds wait)."""
    ensure_dir(cache_dir)
    with open(cache_dir / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def publishing_dir(final: Path):
    """Yield a temp dir next to `final`; on success rename it to `final`.

    A half-built entry therefore never appears under its final name.
    """
    ensure_dir(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def install_file(src: Path, dst: Path) -> None:
    """Copy src to dst atomically (temp file + rename), preserving mode."""
    ensure_dir(dst.parent)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        shutil.copymode(src, tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
