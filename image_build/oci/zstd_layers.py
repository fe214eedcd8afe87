"""zstd layers for umoci 0.4.7, which unpacks only gzip and plain tar layers.

umoci 0.4.7 (Debian 12) refuses a layer of media type `...tar+zstd` ("blob is not
correct mediatype").  For an image with zstd layers, `unpack_layout` makes a
private OCI layout in the conversion's work directory: the config and the other
layers are hard links to the store's blobs, each zstd layer is decompressed (by the
zstd tool) into a plain tar blob -- its digest is the layer's diff_id -- and a
manifest listing those is tagged with the image's reference.  umoci unpacks that;
the store keeps the image exactly as the registry served it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from image_build.run import run

from .layers import ZSTD_TIMEOUT

ZSTD_TYPES = ("application/vnd.oci.image.layer.v1.tar+zstd",)
PLAIN_TAR = "application/vnd.oci.image.layer.v1.tar"


def has_zstd(manifest: dict) -> bool:
    return any(layer.get("mediaType") in ZSTD_TYPES for layer in manifest.get("layers", []))


def _put(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _plain(blob: Path, layout: Path) -> dict:
    """The zstd layer `blob` decompressed into the layout; its descriptor."""
    scratch = layout / "blobs" / "sha256" / ".plain"
    with open(scratch, "wb") as out:
        run(["zstd", "-q", "-d", "-c", blob], timeout=ZSTD_TIMEOUT, stdout=out)
    sha = hashlib.sha256()
    with open(scratch, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    size = scratch.stat().st_size
    os.replace(scratch, layout / "blobs" / "sha256" / sha.hexdigest())
    return {"mediaType": PLAIN_TAR, "digest": f"sha256:{sha.hexdigest()}", "size": size}


def _link(store_blob: Path, layout: Path, digest: str) -> None:
    os.link(store_blob, layout / "blobs" / "sha256" / digest.split(":", 1)[1])


def unpack_layout(store, ref: str, manifest: dict, work: Path) -> Path:
    """A layout under `work` holding `ref` with its zstd layers as plain tars."""
    layout = work / "zstd-layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    _link(store.blob(manifest["config"]["digest"]), layout, manifest["config"]["digest"])
    layers = []
    for layer in manifest.get("layers", []):
        if layer.get("mediaType") in ZSTD_TYPES:
            layers.append(_plain(store.blob(layer["digest"]), layout))
        else:
            _link(store.blob(layer["digest"]), layout, layer["digest"])
            layers.append(layer)
    own = dict(manifest, layers=layers)
    described = _put(layout, json.dumps(own).encode())
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **described,
        "annotations": {"org.opencontainers.image.ref.name": ref}}]}
    (layout / "index.json").write_text(json.dumps(index))
    return layout
