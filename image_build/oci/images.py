"""Pull, import, list, inspect and remove OCI images; each one's erofs rootfs, cached
by its manifest digest (store.py has the layout).

A pull or import copies the image into the shared store with skopeo (blobs that
are already there are not fetched again), checks its platform and its layers, and
converts it: umoci unpacks the layers in order (whiteouts, opaque whiteouts, hard
links, owners, modes, xattrs) into a temporary bundle, and rootfs.make_erofs turns
the bundle's rootfs into the image, built in a temporary directory and renamed
into place (cache.publishing_dir), so a full disk leaves no half entry.
"""

from __future__ import annotations

import errno
import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from image_build import cache, log, rootfs as rootfs_mod
from image_build.errors import BuildError
from image_build.run import CommandError, run

from . import layers, platform, refs, skopeo, zstd_layers
from .access import Access, resolved
from .store import Store, nothing_on_failure

ROOTFS_NAME = "rootfs.img"
INFO_NAME = "image.json"
UNPACK_TIMEOUT = 1800


@dataclass(frozen=True)
class Image:
    ref: str
    digest: str             # the manifest's
    rootfs: Path            # the erofs image
    info: dict              # image.json: config, layers, sizes, rootfs digest

    @property
    def config(self) -> dict:
        """The image config's defaults (Entrypoint, Cmd, Env, WorkingDir, User)."""
        return self.info.get("config", {})


def _load(store: Store, ref: str, digest: str) -> Image | None:
    entry = store.image_dir(digest)
    info = cache.read_json(entry / INFO_NAME)
    if info is None or not (entry / ROOTFS_NAME).is_file():
        return None
    return Image(ref, digest, entry / ROOTFS_NAME, info)


def _check_layers(store: Store, ref: str, manifest: dict, work: Path) -> dict[str, Path]:
    """Every layer checked (layers.check_layer); the zstd ones' plain tars, by digest."""
    plain = {}
    (work / "plain").mkdir()
    for layer in manifest.get("layers", []):
        digest = layer["digest"]
        tar = work / "plain" / digest.split(":", 1)[-1]
        if layers.check_layer(store.blob(digest), ref, digest, plain=tar):
            plain[digest] = tar
    return plain


def _unpack(store: Store, ref: str, manifest: dict, work: Path) -> Path:
    bundle = work / "bundle"
    plain = _check_layers(store, ref, manifest, work)
    layout = (zstd_layers.unpack_layout(store, ref, manifest, work, plain) if zstd_layers.has_zstd(manifest)
              else store.layout)
    run(["umoci", "unpack", "--image", f"{layout}:{ref}", bundle], timeout=UNPACK_TIMEOUT)
    return bundle / "rootfs"


def _erofs_key(config: dict) -> str:
    """The filesystem UUID's key: the layers' content (diff_ids), whatever their compression
    and whichever transport brought them -- so an image gives the same rootfs digest."""
    return cache.Hasher("oci-rootfs").add("diff_ids", config.get("rootfs", {}).get("diff_ids", [])).hexdigest()


def _convert(store: Store, ref: str, digest: str, manifest: dict, config: dict) -> Image:
    cache.ensure_dir(store.root)
    work = Path(tempfile.mkdtemp(prefix=".work-", dir=store.root))
    try:
        with log.step(f"Converting {ref} to an erofs rootfs"):
            tree = _unpack(store, ref, manifest, work)
            with cache.publishing_dir(store.image_dir(digest)) as tmp:
                rootfs_mod.make_erofs(tree, tmp / ROOTFS_NAME, key=_erofs_key(config),
                                      epoch=_epoch(config))
                info = _info(digest, manifest, config, tmp / ROOTFS_NAME, tree)
                cache.write_json(tmp / INFO_NAME, info)
    except CommandError as e:
        if "no space left" in (e.output + e.summary).lower():
            raise BuildError(f"image {ref}: disk full (no space left on device) while converting "
                             f"it; nothing was kept\n{e.details()}") from None
        raise
    except OSError as e:
        full = " (disk full)" if e.errno == errno.ENOSPC else ""
        raise BuildError(f"image {ref}: converting it failed{full}: {e}; nothing was kept") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Image(ref, digest, store.image_dir(digest) / ROOTFS_NAME, info)


def _epoch(config: dict) -> int:
    """The image's creation time (mtimes are clamped to it, and the superblock records
    it: the same image gives the same erofs bytes), 0 when it has none."""
    try:
        created = datetime.fromisoformat(config["created"][:19])
        return int(created.replace(tzinfo=timezone.utc).timestamp())
    except (KeyError, TypeError, ValueError):
        return 0


def _info(digest: str, manifest: dict, config: dict, image: Path, tree: Path) -> dict:
    return {
        "digest": digest,
        "config_digest": manifest["config"]["digest"],
        "platform": f"{config.get('os')}/{config.get('architecture')}",
        "created": config.get("created"),
        "layers": [{"digest": l["digest"], "size": l.get("size"), "media_type": l.get("mediaType")}
                   for l in manifest.get("layers", [])],
        "config": {k: config.get("config", {}).get(k)
                   for k in ("Entrypoint", "Cmd", "Env", "WorkingDir", "User")},
        "size": sum(l.get("size", 0) for l in manifest.get("layers", [])),
        "rootfs_size": image.stat().st_size,
        "rootfs_digest": "sha256:" + cache.file_sha256(image),
        "tree_size": rootfs_mod.content_size(tree)[0],
    }


def _checked(store: Store, ref: str, want: tuple[str, str]) -> Image:
    """The image `ref` names in the store, its platform and layers checked, converted
    (once per manifest digest)."""
    digest = store.tags()[ref]
    with nothing_on_failure(store, ref):
        manifest = store.read_blob(digest)
        config = store.read_blob(manifest["config"]["digest"])
        platform.check_config(ref, config, want)
        return _load(store, ref, digest) or _convert(store, ref, digest, manifest, config)


def pull(ref: str, cache_dir: Path, *, access: Access = Access(),
         platform_text: str | None = None) -> Image:
    """Fetch `ref` from its registry into the store (blobs already held are not fetched);
    `access`: TLS and credentials (access.py)."""
    ref = refs.normalize(ref)
    want = platform.parse(platform_text, (skopeo.HOST_OS, skopeo.HOST_ARCH))
    source = f"docker://{ref}"
    with log.step(f"Pulling {ref}"), resolved(access, refs.registry_of(ref)) as reach:
        top = skopeo.inspect_raw(ref, source, access=reach)
        if platform.is_index(top):
            platform.check_index(ref, top, want)
        store = Store.at(cache_dir)
        with store.locked():
            skopeo.copy(ref, source, f"oci:{store.layout}:{ref}", access=reach, platform=want)
            return _checked(store, ref, want)


def ensure(ref: str, cache_dir: Path, *, access: Access = Access(),
           platform_text: str | None = None) -> Image:
    """The image, pulled only when the store has none by that name (like `docker run`)."""
    norm = refs.normalize(ref)
    store = Store.at(cache_dir)
    digest = store.tags().get(norm)
    image = _load(store, norm, digest) if digest else None
    return image or pull(norm, cache_dir, access=access, platform_text=platform_text)


def import_image(path: Path, cache_dir: Path, *, name: str | None = None,
                 platform_text: str | None = None) -> Image:
    """An OCI layout directory, OCI archive or docker-archive into the store as `name`."""
    source = skopeo.transport_for(Path(path))
    ref = refs.normalize(name or _name_in(Path(path), source))
    want = platform.parse(platform_text, (skopeo.HOST_OS, skopeo.HOST_ARCH))
    store = Store.at(cache_dir)
    with log.step(f"Importing {path} as {ref}"), store.locked():
        skopeo.copy(ref, source, f"oci:{store.layout}:{ref}", platform=want)
        return _checked(store, ref, want)


def _name_in(path: Path, source: str) -> str:
    """The name the archive gives its image (docker-archive RepoTags, an OCI layout's
    one ref.name), else an error asking for --name."""
    names: list[str] = []
    try:
        if source.startswith("docker-archive:"):
            with tarfile.open(path) as tar:
                data = json.load(tar.extractfile("manifest.json"))
            names = [t for entry in data for t in entry.get("RepoTags") or []]
        elif source.startswith("oci:"):
            index = json.loads((path / "index.json").read_text())
            names = [m.get("annotations", {}).get("org.opencontainers.image.ref.name")
                     for m in index.get("manifests", [])]
    except (OSError, ValueError, KeyError, tarfile.TarError, AttributeError):
        names = []
    if len(names) == 1 and names[0] and "/" in names[0]:
        return names[0]
    raise BuildError(f"{path}: give the image a name with --name REF (e.g. --name local/app:1)")


def lookup(ref: str, cache_dir: Path) -> Image:
    norm = refs.normalize(ref)
    store = Store.at(cache_dir)
    digest = store.tags().get(norm)
    image = _load(store, norm, digest) if digest else None
    if image is None:
        raise BuildError(f"image {ref}: not in the image store (pull it with `kindling image pull {ref}`)")
    return image


def list_images(cache_dir: Path) -> list[Image]:
    store = Store.at(cache_dir)
    return [image for ref, digest in sorted(store.tags().items())
            if (image := _load(store, ref, digest)) is not None]


def remove(ref: str, cache_dir: Path) -> Image:
    """Drop the name; the rootfs and blobs no other name uses go too (umoci gc)."""
    image = lookup(ref, cache_dir)
    store = Store.at(cache_dir)
    with store.locked():
        store.untag(image.ref)
        if image.digest not in store.tags().values():
            shutil.rmtree(store.image_dir(image.digest), ignore_errors=True)
        run(["umoci", "gc", "--layout", store.layout], timeout=UNPACK_TIMEOUT)
    return image
