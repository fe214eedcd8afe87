"""The root filesystem image: erofs (default) or ext4, never by mounting.

The source is a directory, a tarball (`.tar`, `.tar.gz`, ... -- e.g. a
`docker export`), or a built-in base: by default a tiny busybox system
(busybox.py), or Debian with systemd (debian.py, `--base debian`).
"""

from __future__ import annotations

import os
import stat
import tarfile
import uuid
from pathlib import Path

from image_build import cache, log
from image_build.errors import BuildError
from image_build.run import run

FORMATS = ("erofs", "ext4")
MKFS_TIMEOUT = 1800
UUID_NAMESPACE = uuid.UUID("6b696e64-6c69-6e67-2d72-6f6f74667300")  # "kindling-rootfs"


# --------------------------------------------------------------------------
# Sources


def check_source(rootfs: Path) -> str:
    """'dir' or 'tar'; a clear error for anything else."""
    if not os.path.lexists(rootfs):
        raise BuildError(f"--rootfs {rootfs}: no such file or directory (expected a directory or a tarball)")
    if rootfs.is_dir():
        return "dir"
    if rootfs.is_file():
        try:
            ok = tarfile.is_tarfile(rootfs)
        except OSError as e:
            raise BuildError(f"--rootfs {rootfs}: cannot read: {e.strerror}") from None
        if ok:
            return "tar"
        raise BuildError(
            f"--rootfs {rootfs}: not a tar archive (expected a directory or a .tar, .tar.gz, .tar.bz2"
            " or .tar.xz file; decompress a .tar.zst first)"
        )
    raise BuildError(f"--rootfs {rootfs}: neither a directory nor a regular file")


def source_key(rootfs: Path, kind: str) -> str:
    if kind == "dir":
        return cache.tree_fingerprint(rootfs)
    return cache.file_sha256(rootfs)


def safe_member_name(member: tarfile.TarInfo, tarball: Path) -> str:
    name = member.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise BuildError(f"{tarball}: member {name!r} has an absolute path; refusing to extract it")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BuildError(
            f"{tarball}: member {name!r} contains '..' and could escape the rootfs; refusing to extract it"
        )
    return "/".join(parts)


def _no_symlink_parents(dest: Path, rel: str, what: str) -> None:
    cur = dest
    for part in rel.split("/")[:-1]:
        cur = cur / part
        if cur.is_symlink():
            raise BuildError(f"{what} through the symlink {cur.relative_to(dest)}; refusing to extract it")


def extract_tarball(tarball: Path, dest: Path) -> None:
    """Extract with numeric owners, refusing members that could escape `dest`
    (absolute names, '..', hard links outside, writes through symlinks)."""
    dest.mkdir(parents=True, exist_ok=True)
    dirs: list[tarfile.TarInfo] = []
    try:
        with tarfile.open(tarball) as tar:
            for member in tar:
                rel = safe_member_name(member, tarball)
                if not rel:
                    dirs.append(member)  # the root itself ("./")
                    member.name = "."
                    continue
                member.name = rel
                # never write through a symlink extracted earlier
                _no_symlink_parents(dest, rel, f"{tarball}: member {rel!r} would be written")
                if member.islnk():
                    target = safe_member_name(tarfile.TarInfo(member.linkname), tarball)
                    member.linkname = target
                    if not target:
                        raise BuildError(f"{tarball}: hard link {rel!r} points to the root directory")
                    _no_symlink_parents(dest, target, f"{tarball}: hard link {rel!r} -> {target!r} would point")
                if member.isdir():
                    dirs.append(member)
                else:
                    final = dest / rel
                    if final.is_symlink() or (final.exists() and not final.is_dir()):
                        final.unlink()  # replace, never write through an earlier symlink
                kwargs = {"set_attrs": not member.isdir(), "numeric_owner": True}
                if hasattr(tarfile, "data_filter"):
                    kwargs["filter"] = "fully_trusted"  # checked above; keep modes and owners
                tar.extract(member, dest, **kwargs)
            # directory attributes last (children changed their mtimes)
            for member in reversed(dirs):
                path = dest / member.name
                tar.chown(member, str(path), numeric_owner=True)
                tar.chmod(member, str(path))
                tar.utime(member, str(path))
    except tarfile.TarError as e:
        raise BuildError(f"{tarball}: broken tar archive: {e}") from None
    except OSError as e:
        raise BuildError(f"{tarball}: extraction failed: {e}") from None


# --------------------------------------------------------------------------
# Images


def content_size(root: Path) -> tuple[int, int]:
    """(bytes rounded to 4 KiB blocks, number of inodes) under root."""
    total = 0
    count = 1
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            count += 1
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
                total += (st.st_size + 4095) // 4096 * 4096
    return total, count


def make_erofs(src: Path, dest: Path, *, key: str, epoch: int | None) -> None:
    """mkfs.erofs, keeping owners and per-file mtimes.  With an `epoch` the image is
    reproducible: later mtimes are clamped to it and the superblock records it;
    without, the superblock records the build time."""
    argv = ["mkfs.erofs", "--quiet", f"-U{uuid.uuid5(UUID_NAMESPACE, key)}"]
    if epoch is not None:
        argv += [f"-T{epoch}"]  # before --preserve-mtime, which turns "fixed" into "clamped"
    argv += ["--preserve-mtime", dest, src]
    run(argv, timeout=MKFS_TIMEOUT)


def make_ext4(src: Path | None, dest: Path, *, size_bytes: int, key: str, label: str = "",
              inodes: int | None = None, journal: bool = False, lazy: bool = False) -> None:
    """A sparse file of size_bytes formatted with mkfs.ext4 (-d src to fill it)."""
    fs_uuid = str(uuid.uuid5(UUID_NAMESPACE, key))
    size_bytes = (size_bytes + 4095) // 4096 * 4096
    if dest.exists():
        dest.unlink()
    with open(dest, "wb") as f:
        f.truncate(size_bytes)
    ext = f"hash_seed={fs_uuid},root_owner=0:0"
    if lazy:
        ext += ",lazy_itable_init=1,lazy_journal_init=1"
    argv = ["mkfs.ext4", "-q", "-F", "-b", "4096", "-U", fs_uuid, "-E", ext, "-m", "0"]
    if label:
        argv += ["-L", label]
    if not journal:
        argv += ["-O", "^has_journal"]
    if inodes:
        argv += ["-N", str(inodes)]
    if src is not None:
        argv += ["-d", src]
    argv += [dest, f"{size_bytes // 1024}k"]
    run(argv, timeout=MKFS_TIMEOUT, env={"E2FSPROGS_FAKE_TIME": "0"})


def ext4_size_for(root: Path) -> tuple[int, int]:
    """(image size, inode count): content + 20 % + 16 MiB, rounded to 1 MiB."""
    total, count = content_size(root)
    inodes = int(count * 1.25) + 1024
    size = int(total * 1.2) + inodes * 256 + (16 << 20)
    return (size + (1 << 20) - 1) // (1 << 20) * (1 << 20), inodes


def make_image(src: Path, dest: Path, fmt: str, *, key: str, epoch: int | None = None) -> None:
    """An image of `src`; `epoch`: reproducible erofs, mtimes clamped to it (make_erofs)."""
    if fmt == "erofs":
        make_erofs(src, dest, key=key, epoch=epoch)
    elif fmt == "ext4":
        size, inodes = ext4_size_for(src)
        log.info(f"ext4 image size {log.human_size(size)}, {inodes} inodes")
        make_ext4(src, dest, size_bytes=size, key=key, label="kindling-root", inodes=inodes)
    else:
        raise BuildError(f"unknown rootfs format {fmt!r}: expected one of {', '.join(FORMATS)}")
