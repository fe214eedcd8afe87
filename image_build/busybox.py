"""The default rootfs: a tiny busybox system from Debian's busybox-static.

/bin/busybox plus a symlink for every applet (`busybox --list-full`), a
minimal /etc and the usual empty directories.  Every timestamp is 0 and every
owner root, so the same busybox package always gives the same tree.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from image_build import debs
from image_build.errors import BuildError
from image_build.run import run

PACKAGE = "busybox-static"
LIST_TIMEOUT = 30

ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\n",
    "etc/hostname": "kindling\n",
    "etc/resolv.conf": "",
}
DIRS = {
    "bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
    "etc": 0o755, "proc": 0o555, "sys": 0o555, "dev": 0o755, "run": 0o755,
    "tmp": 0o1777, "root": 0o700, "mnt": 0o755,
}


def fetch(cache_dir: Path) -> tuple[debs.DebInfo, Path]:
    """The busybox binary from the cached busybox-static package."""
    debs.require_apt(f"the default rootfs is built from Debian's {PACKAGE}; pass --rootfs DIR|TARBALL instead")
    info, root = debs.fetch_and_extract(PACKAGE, cache_dir, "busybox")
    binary = root / "bin" / "busybox"
    if not binary.is_file():
        raise BuildError(f"{PACKAGE} {info.version}: {binary} missing from the extracted package")
    return info, binary


def applets(binary: Path) -> list[str]:
    proc = run([binary, "--list-full"], timeout=LIST_TIMEOUT)
    out = []
    for line in proc.stdout.splitlines():
        line = line.strip().strip("/")
        if not line:
            continue
        if ".." in line.split("/"):
            raise BuildError(f"{binary} --list-full printed a strange applet path {line!r}")
        out.append(line)
    if not out:
        raise BuildError(f"{binary} --list-full printed no applets")
    return sorted(set(out))


def stage(dest: Path, binary: Path) -> int:
    """Lay out the busybox system in `dest` (empty); returns the applet count."""
    for d, mode in DIRS.items():
        (dest / d).mkdir(parents=True, exist_ok=True)
        os.chmod(dest / d, mode)
    shutil.copyfile(binary, dest / "bin" / "busybox")
    os.chmod(dest / "bin" / "busybox", 0o755)
    names = [a for a in applets(binary) if a != "bin/busybox"]
    for applet in names:
        link = dest / applet
        link.parent.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(link):
            os.symlink("/bin/busybox", link)
    for rel, text in ETC_FILES.items():
        (dest / rel).write_text(text)
        os.chmod(dest / rel, 0o644)
    # fixed owners and times for reproducibility
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames + [""]:
            p = os.path.join(dirpath, name) if name else dirpath
            os.lchown(p, 0, 0)
            os.utime(p, (0, 0), follow_symlinks=False)
    return len(names)
