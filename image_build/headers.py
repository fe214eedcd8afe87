"""Kernel headers for the guest: one reproducible tarball from Debian's packages.

`/lib/modules/<rel>/build` is a working build tree only with three Debian
packages, at the version of the kernel image package (apt-cache depends):

    linux-headers-<rel>          usr/src/linux-headers-<rel>/  (.config, Module.symvers, arch)
    linux-headers-<abi>-common   usr/src/linux-headers-<abi>-common/  (its Makefile includes this one)
    linux-kbuild-<major.minor>   usr/lib/linux-kbuild-<X.Y>/  (scripts/ and tools/ link here)

The tarball holds those three trees with their paths relative to the root and
Debian's relative symlinks (scripts -> ../../lib/linux-kbuild-6.1/scripts), in
sorted order, owner 0:0, every mtime the arch package's Makefile's (a fixed date
per package version), so two builds are byte-identical.  The guest's worker
(initsys/headers.py) installs it and makes the `build` link itself.
A --kernel that is not Debian's package has no headers: the initrd gets none.

Compression: gzip -9, chosen by measurement (bench/headers.py; 6.1.0-57-cloud-amd64,
12,905 members, 12,348 files, 54 MiB of content; the guest extracts with Python's
tarfile in stream mode, which has zlib built in and liblzma, not zstd):

    tarball   size      host: read all members   guest (TCG): worker install, 3 runs interleaved
    gz -9     12.4 MiB  0.40 s                    21.2 s (21.1-22.7)
    xz -6      9.0 MiB  0.76-0.80 s               29.8 s (29.0-32.3)

Creating 12k files dominates the guest's install; xz's decoding, ~2x gzip's,
adds ~8 s on top.  The 3.4 MiB that xz saves cost nothing measurable at boot:
the tarball sits in an uncompressed initrd segment (initrd.py), which the
kernel only copies (kernel -> PID 1: 1.155 s with the headers, 1.115 s
without, medians of 5 interleaved boots, within the noise).
"""

from __future__ import annotations

import gzip
import lzma
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

from image_build import cache, debs, log
from image_build.errors import BuildError
from image_build.kernel import Kernel
from initsys.headers import HEADERS_DIR, tarball_name

COMPRESSIONS = ("gz", "xz")
COMPRESSION = "gz"
DEB_KIND = "kernel-headers"   # <cache>/kernel-headers/<pkg>_<ver>: the extracted packages
CACHE_KIND = "headers"        # <cache>/headers/<key>/: the tarballs
TREE_PARENTS = ("usr/src/", "usr/lib/")


@dataclass(frozen=True)
class Headers:
    tarball: Path           # in the cache
    key: str                # the cache key: package versions, builder, compression
    release: str
    compression: str
    packages: tuple[str, ...]   # "name version" each

    @property
    def path_in_initrd(self) -> str:
        return f"{HEADERS_DIR}/{self.tarball.name}"

    def info(self) -> dict:
        return {"path_in_initrd": self.path_in_initrd, "release": self.release,
                "size": self.tarball.stat().st_size, "compression": self.compression}


def packages_for(kern: Kernel) -> list[debs.DebInfo]:
    """linux-headers-<rel> and what it depends on that holds a tree (the -common and
    linux-kbuild packages; not linux-compiler-*, a compiler), all at the kernel's version."""
    image = kern.package
    arch = debs.exact(f"linux-headers-{kern.release}", image.version,
                      f"the kernel package {image.package} is version {image.version}")
    wanted = [arch]
    for dep in debs.depends(arch.package, arch.version):
        if dep.startswith(("linux-headers-", "linux-kbuild-")):
            wanted.append(debs.exact(dep, image.version,
                                     f"{arch.package} {arch.version} depends on it, and the kernel"
                                     f" package {image.package} is version {image.version}"))
    if not any(p.package.startswith("linux-kbuild-") for p in wanted) or len(wanted) != 3:
        raise BuildError(f"{arch.package} {arch.version} depends on {debs.depends(arch.package, arch.version)};"
                         " expected one linux-headers-*-common and one linux-kbuild-* package")
    return wanted


def trees_of(roots: list[Path]) -> list[tuple[Path, str]]:
    """The (host dir, path in the tarball) of every tree the extracted packages hold:
    each directory directly below usr/src/ or usr/lib/ (a symlink there is a
    convenience link, like usr/src/linux-kbuild-6.1, and is left out)."""
    trees = []
    for root in roots:
        for parent in TREE_PARENTS:
            d = root / parent
            if d.is_dir():
                trees += [(p, parent + p.name) for p in sorted(d.iterdir())
                          if p.is_dir() and not p.is_symlink()]
    names = [name for _, name in trees]
    if len(set(names)) != len(names):
        raise BuildError(f"the headers packages overlap: trees {names}")
    return trees


def _members(host_dir: Path, arcname: str, mtime: int):
    """TarInfo + host path for everything in a tree (the caller sorts them)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(host_dir):
        rel_dir = Path(dirpath).relative_to(host_dir).as_posix()
        base = arcname if rel_dir == "." else f"{arcname}/{rel_dir}"
        out.append((base, Path(dirpath)))
        out += [(f"{base}/{name}", Path(dirpath) / name) for name in filenames]
        # a symlink to a directory is listed by os.walk among dirnames; not followed
        out += [(f"{base}/{name}", Path(dirpath) / name) for name in dirnames
                if (Path(dirpath) / name).is_symlink()]
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]
    for name, path in out:
        st = os.lstat(path)
        info = tarfile.TarInfo(name)
        info.mtime = mtime
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mode = stat.S_IMODE(st.st_mode) & 0o755
        if stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(path)
        elif stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISREG(st.st_mode):
            info.size = st.st_size
        else:
            raise BuildError(f"{path}: unexpected file type in a headers package (mode {oct(st.st_mode)})")
        yield info, path


def write_tarball(trees: list[tuple[Path, str]], dest: Path, compression: str, mtime: int) -> int:
    """The tarball of `trees` at `dest`, members sorted by name (a directory before its
    contents); returns the member count.  No name or time goes into the compression
    header, so equal inputs give equal bytes."""
    if compression not in COMPRESSIONS:
        raise BuildError(f"headers compression {compression!r}: expected one of {', '.join(COMPRESSIONS)}")
    members = sorted((m for host_dir, arcname in trees for m in _members(host_dir, arcname, mtime)),
                     key=lambda m: m[0].name.encode())
    with open(dest, "wb") as raw:
        if compression == "gz":
            packed = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0)
        else:
            packed = lzma.LZMAFile(raw, "wb", preset=6)
        with packed, tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for info, path in members:
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return len(members)


def build(kern: Kernel, cache_dir: Path, builder: str, *, compression: str = COMPRESSION,
          force: bool = False) -> Headers | None:
    """The headers tarball for `kern` (cached), or None when its kernel is not Debian's."""
    if kern.package is None:
        log.info(f"kernel headers: none for {kern.origin} (only Debian's kernel package has"
                 " matching linux-headers packages); the initrd gets no headers")
        return None
    debs.require_apt("the kernel headers come from Debian's linux-headers packages; pass --no-headers")
    wanted = packages_for(kern)
    key = (cache.Hasher("headers").add("builder", builder)
           .add("packages", [[p.package, p.version, p.architecture] for p in wanted])
           .add("compression", compression).hexdigest())
    entry = cache_dir / CACHE_KIND / key
    tarball = entry / tarball_name(kern.release, compression)
    headers = Headers(tarball, key, kern.release, compression,
                      tuple(f"{p.package} {p.version}" for p in wanted))
    if not force and tarball.is_file():
        log.info(f"kernel headers: cached ({tarball})")
        return headers
    roots = [debs.fetch_and_extract(p, cache_dir, DEB_KIND)[1] for p in wanted]
    with log.step(f"Building the kernel headers tarball ({compression})"):
        with cache.publishing_dir(entry) as tmp:
            trees, count = tarball_for(roots, kern.release, tmp / tarball.name, compression)
            cache.write_json(tmp / "inputs.json", {"packages": list(headers.packages),
                                                   "trees": trees, "members": count})
        log.info(f"kernel headers: {count} members in {len(trees)} trees,"
                 f" {log.human_size(tarball.stat().st_size)}")
    return headers


def tarball_for(roots: list[Path], release: str, dest: Path, compression: str) -> tuple[list[str], int]:
    """The tarball of the trees in the extracted packages `roots` (the arch package first);
    returns the trees and the member count."""
    trees = trees_of(roots)
    makefile = roots[0] / "usr" / "src" / f"linux-headers-{release}" / "Makefile"
    if not makefile.is_file():
        raise BuildError(f"{makefile} is missing: the headers package does not fit release {release}")
    count = write_tarball(trees, dest, compression, int(makefile.stat().st_mtime))
    return [name for _, name in trees], count
