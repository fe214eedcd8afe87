"""Small ext4 disk images for a VM: the config disk, the overlay disk, volumes.

All are sparse files formatted with mkfs.ext4; nothing is mounted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from image_build import cache
from image_build.errors import BuildError
from image_build.rootfs import make_ext4

CONFIG_NAME = "config.json"
MIN_DISK = 1 << 20


def _check_size(what: str, size_bytes) -> int:
    if isinstance(size_bytes, bool) or not isinstance(size_bytes, int):
        raise BuildError(f"{what}: size_bytes must be an int, got {type(size_bytes).__name__}")
    if size_bytes < MIN_DISK:
        raise BuildError(f"{what}: size_bytes={size_bytes} is too small (at least {MIN_DISK} bytes, 1 MiB)")
    return size_bytes


def config_bytes(config: dict | bytes | str, where: object = "config.json") -> bytes:
    """The bytes of /config.json for `config`: a dict serialised as JSON, bytes or str
    exactly as given.  The one definition: the config disk holds them, and a template's
    clone gets the same bytes on its resume line (host_shim/clone.py)."""
    if isinstance(config, (bytes, bytearray)):
        return bytes(config)
    if isinstance(config, str):
        return config.encode()
    if isinstance(config, dict):
        try:
            return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
        except (TypeError, ValueError) as e:
            raise BuildError(f"config for {where} is not JSON-serialisable: {e}") from None
    raise BuildError(f"config for {where}: expected a dict (or raw bytes), got {type(config).__name__}")


def make_config_disk(config: dict | bytes | str, path: Path) -> Path:
    """An ext4 image holding /config.json (built with `mkfs.ext4 -d`).

    A dict is serialised as JSON; bytes or str are written exactly as given
    (e.g. to test how the guest rejects a malformed config).
    """
    path = Path(path)
    data = config_bytes(config, path)
    cache.ensure_dir(path.parent)
    src = Path(tempfile.mkdtemp(prefix="kindling-config-"))
    try:
        os.chmod(src, 0o755)
        (src / CONFIG_NAME).write_bytes(data)
        os.chmod(src / CONFIG_NAME, 0o644)
        size = max(MIN_DISK, (len(data) * 2 + (512 << 10) + 4095) // 4096 * 4096)
        key = cache.Hasher("config").add("data", data).hexdigest()
        make_ext4(src, path, size_bytes=size, key=key, label="kindling-cfg", inodes=64)
    finally:
        shutil.rmtree(src, ignore_errors=True)
    return path


def _empty_ext4(path: Path, size_bytes: int, what: str, label: str) -> Path:
    path = Path(path)
    size_bytes = _check_size(f"{what} {path}", size_bytes)
    cache.ensure_dir(path.parent)
    make_ext4(None, path, size_bytes=size_bytes, key=str(uuid.uuid4()), label=label,
              journal=True, lazy=True)
    return path


def make_overlay_disk(path: Path, size_bytes: int) -> Path:
    """A sparse, empty ext4 image for the overlay's upper layer."""
    return _empty_ext4(path, size_bytes, "overlay disk", "kindling-ovl")


def make_volume(path: Path, size_bytes: int) -> Path:
    """A sparse, empty ext4 volume."""
    return _empty_ext4(path, size_bytes, "volume", "kindling-vol")
