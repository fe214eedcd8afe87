"""/config.json read from a ready-made config disk (`--config-disk`), on the host.

The host needs the config's `skip_guest_agent` to know what `Running` takes
(PROTOCOL.md §6): a disk whose config enables the agent must wait for
AGENT-READY like any other.  The image is read without mounting it (no root, no
loop device): ext4 with e2fsprogs' `debugfs -R "cat /config.json"`, erofs with
erofs-utils' `fsck.erofs --extract` -- the tools the image builder already keeps.
"""

import tempfile
from pathlib import Path

from . import run
from .errors import die

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


def read(path: Path) -> bytes:
    """The bytes of /config.json on the disk image at `path` (exits 125 naming the disk
    and what is wrong when it cannot be read)."""
    try:
        kind = _kind(path)
    except OSError as e:
        die(f"--config-disk: cannot read {path}: {e.strerror}")
    if kind == "ext4":
        result = run.run(["debugfs", "-R", f"cat /{CONFIG_NAME}", path], timeout=READ_TIMEOUT,
                         check=False)
        if result.returncode == 0 and result.stdout:
            return result.stdout.encode("utf-8", "surrogateescape")   # the file's bytes
    elif kind == "erofs":
        with tempfile.TemporaryDirectory(prefix="kindling-config-disk-") as out:
            result = run.run(["fsck.erofs", f"--extract={out}/root", "--no-preserve", path],
                             timeout=READ_TIMEOUT, check=False)
            config = Path(out, "root", CONFIG_NAME)
            if result.returncode == 0 and config.is_file():
                return config.read_bytes()
    else:
        die(f"--config-disk: {path} is neither an ext4 nor an erofs image")
    die(f"--config-disk: {path} has no readable /{CONFIG_NAME}",
        hint=result.stderr.strip() or None)
