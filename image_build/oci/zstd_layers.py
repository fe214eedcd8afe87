"""zstd layers for umoci 0.4.7, which unpacks only gzip and plain tar layers.

umoci 0.4.7 (Debian 12) refuses a layer of media type `...tar+zstd` ("blob is not
correct mediatype").  For an image with zstd layers, `unpack_layout` makes a
private OCI layout in the conversion's work directory: the config and the other
layers are hard links to the store's blobs, each zstd layer is the plain tar that
layers.check_layer decompressed while checking it (one decompression per layer) -- its digest is the layer's diff_id -- and a
manifest listing those is tagged with the image's reference.  umoci unpacks that;
the store keeps the image exactly as the registry served it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

ZSTD_TYPES = ("application/vnd.oci.image.layer.v1.tar+zstd",)
PLAIN_TAR = "application/vnd.oci.image.layer.v1.tar"


def has_zstd(manifest: dict) -> bool:
    return any(layer.get("mediaType") in ZSTD_TYPES for layer in manifest.get("layers", []))


def _put(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _plain(tar: Path, layout: Path) -> dict:
    """The decompressed layer `tar` (layers.check_layer wrote it) moved into the layout;
    its descriptor."""
    sha = hashlib.sha256()
    with open(tar, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    size = tar.stat().st_size
    os.replace(tar, layout / "blobs" / "sha256" / sha.hexdigest())
    return {"mediaType": PLAIN_TAR, "digest": f"sha256:{sha.hexdigest()}", "size": size}


def _link(store_blob: Path, layout: Path, digest: str) -> None:
    os.link(store_blob, layout / "blobs" / "sha256" / digest.split(":", 1)[1])


def unpack_layout(store, ref: str, manifest: dict, work: Path, plain: dict[str, Path]) -> Path:
    """A layout under `work` holding `ref` with its zstd layers as plain tars (`plain`:
    a zstd layer's digest -> its decompressed tar, from layers.check_layer)."""
    layout = work / "zstd-layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    _link(store.blob(manifest["config"]["digest"]), layout, manifest["config"]["digest"])
    layers = []
    for layer in manifest.get("layers", []):
        if layer.get("mediaType") in ZSTD_TYPES:
            layers.append(_plain(plain[layer["digest"]], layout))
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
