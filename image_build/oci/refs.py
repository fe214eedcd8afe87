"""Image references, normalized as docker does: `alpine` is
`docker.io/library/alpine:latest`, `127.0.0.1:5000/test/app:1` stays itself.

Hand-written: the grammar is a few lines (distribution/reference's
ParseNormalizedNamed), and no kept Python library for it is packaged here.
"""

from __future__ import annotations

import re

from image_build.errors import BuildError

DEFAULT_REGISTRY = "docker.io"
_NAME = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def _split_host(ref: str) -> tuple[str, str]:
    first, sep, rest = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return DEFAULT_REGISTRY, ref


def normalize(ref: str) -> str:
    """The full reference (registry/path:tag or registry/path@sha256:...), or a
    BuildError naming the reference and what was expected."""
    if not isinstance(ref, str) or not ref.strip():
        raise BuildError(f"image reference {ref!r}: expected NAME[:TAG] or NAME@sha256:DIGEST")
    host, rest = _split_host(ref.strip())
    name, at, digest = rest.partition("@")
    tag = ""
    if ":" in name:
        name, _, tag = name.rpartition(":")
    if host == DEFAULT_REGISTRY and "/" not in name:
        name = f"library/{name}"
    if not _NAME.match(name) or (at and not _DIGEST.match(digest)) or (tag and not _TAG.match(tag)):
        raise BuildError(f"image reference {ref!r}: expected NAME[:TAG] or NAME@sha256:DIGEST "
                         "(lowercase name, tag of letters, digits, '.', '_', '-')")
    if at:
        return f"{host}/{name}@{digest}"
    return f"{host}/{name}:{tag or 'latest'}"


def registry_of(ref: str) -> str:
    """The registry host (with port) of a normalized reference."""
    return _split_host(ref)[0]
