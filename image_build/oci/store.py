"""The image store: one OCI image layout shared by every image, under the cache.

    oci/store/            the OCI layout (skopeo writes it, umoci reads it): blobs/sha256/*
                          once each, content-addressed; index.json names each image by
                          its normalized reference (annotation org.opencontainers.image.ref.name)
    oci/images/<hex>/     per manifest digest: rootfs.img (erofs) and image.json
    oci/.lock             held while the store changes (pulls, imports, rm)
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from image_build import cache
from image_build.errors import BuildError

REF_ANNOTATION = "org.opencontainers.image.ref.name"
INDEX_MEDIA_TYPES = ("application/vnd.oci.image.index.v1+json",
                     "application/vnd.docker.distribution.manifest.list.v2+json")


@dataclass(frozen=True)
class Store:
    root: Path          # cache_dir / "oci"

    @classmethod
    def at(cls, cache_dir: Path) -> "Store":
        return cls(Path(cache_dir) / "oci")

    @property
    def layout(self) -> Path:
        return self.root / "store"

    def image_dir(self, manifest_digest: str) -> Path:
        return self.root / "images" / manifest_digest.split(":", 1)[1]

    def blob(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        return self.layout / "blobs" / algo / hexpart

    def locked(self):
        return cache.locked(self.root)

    def tags(self) -> dict[str, str]:
        """{reference: manifest digest} from the layout's index.json."""
        index = cache.read_json(self.layout / "index.json") or {}
        return {m["annotations"][REF_ANNOTATION]: m["digest"]
                for m in index.get("manifests", []) if REF_ANNOTATION in m.get("annotations", {})}

    def read_blob(self, digest: str) -> dict:
        try:
            return json.loads(self.blob(digest).read_bytes())
        except (OSError, ValueError) as e:
            raise BuildError(f"image store {self.layout}: blob {digest} is missing or not JSON "
                             f"({e}); pull the image again") from None

    def untag(self, ref: str) -> None:
        """Drop `ref` from index.json (atomically); blobs stay until gc."""
        path = self.layout / "index.json"
        index = cache.read_json(path)
        if not index:
            return
        index["manifests"] = [m for m in index.get("manifests", [])
                              if m.get("annotations", {}).get(REF_ANNOTATION) != ref]
        tmp = path.with_name(".index.json.tmp")
        tmp.write_text(json.dumps(index))
        tmp.replace(path)


@contextlib.contextmanager
def nothing_on_failure(store: Store, ref: str):
    """Untag `ref` if the block fails: a half-checked image never keeps a name."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            store.untag(ref)
        raise
