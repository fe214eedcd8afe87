"""The floor of this boot path (issue 7, benchmark 5): an initrd with no Python.

Its `/init` is a busybox shell script whose one command line prints
PROGRAM-START on the console and execs the program (`sleep`), so booting it
with `kindling create --initrd FLOOR --agent none --no-headers` measures what
the same kernel, machine and host shim cost when PID 1 costs nothing: with the
agent skipped, the host calls the instance Running as soon as it sees
PROGRAM-START.

The archive holds /init, /bin/busybox (Debian's busybox-static, from the build
cache through image_build.busybox.fetch), the three applet links the script
uses and /dev/console (the kernel opens it as init's stdio).  It is written
**uncompressed**: it is ~2 MiB, and under TCG any decompression costs more
than copying (shared/ENVIRONMENT.md: an uncompressed initrd boots fastest), so
the floor is the lowest this path goes -- a fair bar for the real initrd
(lz4), not a flattering one.

Debian's busybox `date` has no `%N`: the timestamp has whole seconds and
`.000000000Z`.  The host takes the time it *sees* the marker; the timestamp
only has to parse (initsys.protocol.parse_ts), which `floor_initrd` checks.

The initrd is cached in <build cache>/bench-floor/<key>/ (key: the busybox
package version and the script), never in git.

    .venv/bin/python bench/floor.py        # builds it (or finds it cached), prints its path
"""

import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from image_build import busybox, cpio  # noqa: E402
from image_build.cache import default_cache_dir  # noqa: E402
from initsys import protocol  # noqa: E402

PROGRAM = ("/bin/sleep", "3600")
INIT = ("#!/bin/sh\n"
        'echo "HYPEMAN-PROGRAM-START ts=$(date -u +%Y-%m-%dT%H:%M:%S).000000000Z mode=exec"; '
        f"exec {' '.join(PROGRAM)}\n")
APPLETS = ("sh", "date", "sleep")
NAME = "initrd-floor.img"


def check_marker_parses():
    """The host must accept the seconds-resolution timestamp the script prints."""
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000000000Z"
    marker = protocol.parse_line(f"HYPEMAN-PROGRAM-START ts={ts} mode=exec\r")
    if marker is None or marker.kind != protocol.PROGRAM_START or marker.ts is None:
        raise SystemExit(f"the floor's PROGRAM-START line does not parse (ts={ts})")


def entries(binary):
    return [cpio.data("init", INIT.encode(), 0o755),
            cpio.directory("bin"), cpio.file("bin/busybox", binary, 0o755),
            *(cpio.symlink(f"bin/{a}", "busybox") for a in APPLETS),
            cpio.directory("dev"), cpio.chardev("dev/console", 5, 1, 0o600)]


def floor_initrd(cache_dir=None):
    """The floor initrd's path, built once per busybox version and script."""
    check_marker_parses()
    cache_dir = Path(cache_dir or default_cache_dir())
    info, binary = busybox.fetch(cache_dir)
    key = hashlib.sha256(f"{info.version}\0{INIT}\0{APPLETS}".encode()).hexdigest()[:24]
    entry = cache_dir / "bench-floor" / key
    path = entry / NAME
    if path.is_file():
        return path
    entry.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".floor-", dir=entry)
    try:
        with os.fdopen(fd, "wb") as f:
            cpio.write(entries(binary), f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def main():
    path = floor_initrd()
    print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB, uncompressed newc)")


if __name__ == "__main__":
    main()
