"""Refuse layers whose entries would land outside the root.

umoci 0.4.7 does not refuse a layer entry named `../x` or `/x`: it clamps it
into the root (securejoin) and unpacks it.  The issue asks for such a layer to be
refused, so every layer is read here first (names and hard-link targets); the
rules are the rootfs tarball's (image_build/rootfs.py `safe_member_name`).  gzip and
plain tar are read by tarfile; zstd is decompressed by the zstd tool first
(Python 3.11's tarfile has no zstd), once: the plain tar is what umoci unpacks.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

from image_build.errors import BuildError
from image_build.rootfs import safe_member_name
from image_build.run import run

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_TIMEOUT = 600


def _check_members(tar: tarfile.TarFile, what: str) -> None:
    for member in tar:
        safe_member_name(member, what)
        if member.islnk():
            safe_member_name(tarfile.TarInfo(member.linkname), f"{what} (hard link {member.name!r})")


def _check_tar(path: Path, what: str) -> None:
    try:
        with tarfile.open(path, "r|*") as tar:
            _check_members(tar, what)
    except tarfile.TarError as e:
        raise BuildError(f"{what}: not a readable tar layer: {e}") from None


def check_layer(blob: Path, ref: str, digest: str, plain: Path | None = None) -> bool:
    """A BuildError naming the image and layer if an entry escapes the root.

    A zstd layer is decompressed to `plain` (a temporary file when None) and read from
    there; a caller that passes `plain` keeps the tar (image_build/oci/zstd_layers.py
    hands it to umoci: one decompression per layer).  True when `plain` was written.
    """
    what = f"image {ref}: layer {digest}"
    with open(blob, "rb") as f:
        zstd = f.read(4) == ZSTD_MAGIC
    if not zstd:
        _check_tar(blob, what)
        return False
    if plain is None:
        with tempfile.NamedTemporaryFile(prefix="kindling-layer-", suffix=".tar") as scratch:
            _decompress(blob, scratch)
            _check_tar(Path(scratch.name), what)
        return False
    with open(plain, "wb") as out:
        _decompress(blob, out)
    _check_tar(plain, what)
    return True


def _decompress(blob: Path, out) -> None:
    run(["zstd", "-q", "-d", "-c", blob], timeout=ZSTD_TIMEOUT, stdout=out)
