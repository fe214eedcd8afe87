"""/config.json read from a ready-made config disk (`--config-disk`), on the host.

The host needs the config's `skip_guest_agent` to know what `Running` takes
(PROTOCOL.md §6): a disk whose config enables the agent must wait for
AGENT-READY like any other.  The image is read without mounting it (no root, no
loop device): ext4 with e2fsprogs' `debugfs -R "cat /config.json"`, erofs with
erofs-utils' `fsck.erofs --extract` -- the tools the image builder already keeps.

A disk the host cannot read is not refused here: it is booted as given, and the
guest reports what is wrong with it (a FATAL in stage `config`); `--config-disk`
exists to hand the guest any disk, broken ones included.
"""

import tempfile
from pathlib import Path

from . import run

READ_TIMEOUT = 30
EXT4_MAGIC = (1080, b"\x53\xef")       # s_magic, 56 bytes into the superblock at 1024
EROFS_MAGIC = (1024, b"\xe2\xe1\xf5\xe0")
CONFIG_NAME = "config.json"


def _kind(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(2048)
    for kind, (at, magic) in (("ext4", EXT4_MAGIC), ("erofs", EROFS_MAGIC)):
        if head[at:at + len(magic)] == magic:
            return kind
    return None


def _ext4(path: Path) -> bytes | None:
    result = run.run(["debugfs", "-R", f"cat /{CONFIG_NAME}", path], timeout=READ_TIMEOUT,
                     check=False)
    if result.returncode != 0 or not result.stdout:     # debugfs: exit 0, nothing, when absent
        return None
    return result.stdout.encode("utf-8", "surrogateescape")     # the file's bytes


def _erofs(path: Path) -> bytes | None:
    with tempfile.TemporaryDirectory(prefix="kindling-config-disk-") as out:
        result = run.run(["fsck.erofs", f"--extract={out}/root", "--no-preserve", path],
                         timeout=READ_TIMEOUT, check=False)
        config = Path(out, "root", CONFIG_NAME)
        return config.read_bytes() if result.returncode == 0 and config.is_file() else None


def read(path: Path) -> bytes | None:
    """The bytes of /config.json on the disk image at `path`; None when the host cannot
    read them (not ext4 or erofs, no /config.json)."""
    try:
        kind = _kind(path)
    except OSError:
        return None
    if kind == "ext4":
        return _ext4(path)
    if kind == "erofs":
        return _erofs(path)
    return None
