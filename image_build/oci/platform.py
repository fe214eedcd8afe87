"""Which platform of an image to take, and the error naming the platforms it has.

skopeo picks from an index by --override-os/--override-arch, but when none fits
it says only "no image found in manifest list"; and for a single manifest it
takes whatever architecture it is.  So both cases are checked here.
"""

from __future__ import annotations

from image_build.errors import BuildError

from .store import INDEX_MEDIA_TYPES


def parse(text: str | None, default: tuple[str, str]) -> tuple[str, str]:
    """`--platform os/arch` (e.g. linux/amd64) as (os, arch)."""
    if text is None:
        return default
    os_name, sep, arch = text.partition("/")
    if not sep or not os_name or not arch or "/" in arch:
        raise BuildError(f"--platform {text!r}: expected OS/ARCH, e.g. linux/amd64")
    return os_name, arch


def _name(p: dict) -> str:
    return "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)


def is_index(manifest: dict) -> bool:
    return manifest.get("mediaType") in INDEX_MEDIA_TYPES or (
        "manifests" in manifest and "layers" not in manifest)


def check_index(ref: str, index: dict, want: tuple[str, str]) -> None:
    """An index must have `want` among its platforms."""
    platforms = [m.get("platform", {}) for m in index.get("manifests", [])]
    if any((p.get("os"), p.get("architecture")) == want for p in platforms):
        return
    have = ", ".join(sorted({_name(p) for p in platforms if _name(p)})) or "none named"
    raise BuildError(f"image {ref}: no {'/'.join(want)} image in it; the platforms it has: {have}")


def check_config(ref: str, config: dict, want: tuple[str, str]) -> None:
    """A single image's config must be for `want`."""
    have = (config.get("os"), config.get("architecture"))
    if have != want:
        raise BuildError(f"image {ref}: it is for {_name(config) or 'an unnamed platform'} only, "
                         f"not {'/'.join(want)}; the platforms it has: {_name(config) or 'none named'}")
