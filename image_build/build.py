"""Orchestration: kernel + initrd + rootfs into an output directory.

    from image_build.build import build_all, BuildOptions
    art = build_all(BuildOptions(out_dir=Path("build")))

Every artifact is cached under the cache dir, keyed by a hash of its inputs
(Kindling's guest sources, the builder's own sources, the kernel release and
module tree, the pinned dependency versions, the options), and host files
that went into it (interpreter, stdlib files, shared libraries) are checked
by size+mtime before a cached initrd is reused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from image_build import busybox, cache, debian, debs, headers as headers_mod, initrd, kernel as kernel_mod, kmod, log, pyruntime, rootfs as rootfs_mod
from image_build.errors import BuildError

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILDER_DIR = Path(__file__).resolve().parent

KERNEL_NAME = "kernel"
INITRD_NAME = "initrd.img"
ROOTFS_NAME = "rootfs.img"

KEEP_CACHED = {"initrd": 8, "rootfs": 6, "debian": 2, "headers": 4}
BASES = ("busybox", "debian")  # the built-in rootfs choices (when no --rootfs is given)
# Built-in rootfs images are reproducible: every mtime clamped to this (rootfs.make_erofs).
REPRODUCIBLE_EPOCH = {"busybox": 0, "debian": debian.SOURCE_DATE_EPOCH}


@dataclass
class BuildOptions:
    out_dir: Path
    rootfs: Path | None = None
    rootfs_image: Path | None = None   # a finished rootfs image (an OCI image's, image_build/oci)
    base: str = "busybox"  # the built-in rootfs when `rootfs` is None: one of BASES
    kernel: Path | None = None
    modules: Path | None = None
    rootfs_format: str = "erofs"
    compression: str = initrd.DEFAULT_COMPRESSION
    cache_dir: Path | None = None
    force: bool = False  # rebuild even when the cache has the artifact
    headers: bool = True  # the kernel-headers tarball in the initrd (Debian's kernel only)


@dataclass
class Artifacts:
    kernel: Path
    initrd: Path
    rootfs: Path
    kernel_release: str
    info: dict = field(default_factory=dict)  # sizes, cache hits, modules, headers, ...


# --------------------------------------------------------------------------
# Input hashes


def _py_tree_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        files += [Path(dirpath) / f for f in sorted(filenames)
                  if f.endswith(".py") or f.endswith(pyruntime.GUEST_DATA_SUFFIXES)]
    return files


def builder_hash() -> str:
    h = cache.Hasher("builder")
    for f in _py_tree_files(BUILDER_DIR):
        h.add(f.relative_to(BUILDER_DIR).as_posix(), f.read_bytes())
    return h.hexdigest()


def guest_source_hash(repo_root: Path = REPO_ROOT) -> str:
    h = cache.Hasher("guest")
    for pkg in pyruntime.KINDLING_PACKAGES:
        for f in _py_tree_files(repo_root / pkg):
            h.add(f.relative_to(repo_root).as_posix(), f.read_bytes())
    init = repo_root / initrd.INIT_SOURCE
    h.add("init", init.read_bytes() if init.is_file() else b"<placeholder>")
    return h.hexdigest()


def image_command(base: str, rootfs: Path | None) -> list[str] | None:
    """The image's own command, as a container image has one: /sbin/init for the
    Debian base; None for busybox and for a --rootfs, which has none."""
    return list(debian.COMMAND) if rootfs is None and base == "debian" else None


# --------------------------------------------------------------------------
# Helpers


def check_base(base: str | None, rootfs: Path | None) -> None:
    """--base (None: not given) names a built-in rootfs, and excludes --rootfs."""
    if base is not None and base not in BASES:
        raise BuildError(f"--base {base!r}: expected one of {', '.join(BASES)}")
    if base is not None and rootfs is not None:
        raise BuildError(f"--base {base} and --rootfs {rootfs} cannot be used together:"
                         " --base picks a built-in rootfs, --rootfs gives your own")


def _validate(opts: BuildOptions) -> None:
    check_base(None if opts.base == "busybox" else opts.base, opts.rootfs)
    if opts.rootfs_format not in rootfs_mod.FORMATS:
        raise BuildError(f"rootfs_format {opts.rootfs_format!r}: expected one of {', '.join(rootfs_mod.FORMATS)}")
    if opts.compression not in initrd.COMPRESSIONS:
        raise BuildError(f"compression {opts.compression!r}: expected one of {', '.join(initrd.COMPRESSIONS)}")
    if opts.rootfs is not None:
        rootfs_mod.check_source(Path(opts.rootfs))
    if opts.kernel is not None:
        kernel_mod.given_kernel(Path(opts.kernel), opts.modules)  # checks only
    elif opts.modules is not None:
        raise BuildError("--modules was given without --kernel; give both, or neither to use Debian's cloud kernel")


def _publish(src: Path, dest: Path) -> bool:
    """Copy a cached artifact to the output dir unless an identical copy is
    already there (same size and mtime).  Returns True if it copied."""
    s = src.stat()
    try:
        d = dest.stat()
        if d.st_size == s.st_size and d.st_mtime_ns == s.st_mtime_ns:
            return False
    except FileNotFoundError:
        pass
    cache.ensure_dir(dest.parent)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        try:
            os.link(src, tmp)  # free, and safe: cached artifacts are never modified in place
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return True


def _prune(kind_dir: Path, keep: int, current: Path) -> None:
    if not kind_dir.is_dir():
        return
    entries = [p for p in kind_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)


def _work_dir(cache_dir: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix="work-", dir=cache.ensure_dir(cache_dir / "tmp")))


# --------------------------------------------------------------------------
# The artifacts


def modules_fingerprint(modules_dir: Path) -> list:
    """What identifies the kernel-module tree in the initrd's cache key: its modules.dep
    when depmod has indexed it (Debian's kernel packages and depmod rewrite it on every
    change; the closure's own .ko files are checked beside the key, as host files), else
    the whole tree's metadata.  Walking the tree (~4,000 files) cost ~0.1 s of every
    create -- a template clone's too."""
    dep = Path(modules_dir) / "modules.dep"
    if dep.is_file():
        return ["modules.dep", cache.stat_fingerprint(dep)]
    return ["tree", cache.tree_fingerprint(Path(modules_dir))]


def build_initrd(opts: BuildOptions, cache_dir: Path, kern: kernel_mod.Kernel,
                 headers: headers_mod.Headers | None = None) -> tuple[Path, dict]:
    key = (
        cache.Hasher("initrd")
        .add("builder", builder_hash())
        .add("guest", guest_source_hash())
        .add("release", kern.release)
        .add("modules", modules_fingerprint(kern.modules_dir))
        .add("wanted", kmod.WANTED_MODULES)
        .add("on_demand", kmod.ON_DEMAND_MODULES)
        .add("pins", pyruntime.PINS)
        .add("python", cache.fingerprints(pyruntime.host_inputs()))
        .add("compression", opts.compression)
        .add("headers", headers.key if headers else None)
        .hexdigest()
    )
    entry = cache_dir / "initrd" / key
    image = entry / INITRD_NAME
    recorded = cache.read_json(entry / "inputs.json")
    if (not opts.force and image.is_file() and recorded
            and cache.fingerprints_unchanged(recorded.get("host_files", {}))):
        log.info(f"initrd: cached ({entry})")
        os.utime(entry)  # most recently used
        return image, dict(recorded["info"], cached=True)

    pyruntime.check_guest_python()
    site = pyruntime.site_dir(pyruntime.install_deps(cache_dir))
    basedir = kmod.module_basedir(kern.modules_dir, kern.release, cache_dir)
    with log.step("Resolving the kernel-module closure"):
        ko_paths = kmod.closure(basedir, kern.release)
        on_demand = kmod.on_demand_closures(basedir, kern.release, ko_paths)
    with log.step(f"Building initrd ({opts.compression})"):
        work = _work_dir(cache_dir)
        try:
            with cache.publishing_dir(entry) as tmp:
                result = initrd.build_initrd(
                    tmp / INITRD_NAME, work=work, compression=opts.compression,
                    repo_root=REPO_ROOT, site=site, kernel_release=kern.release,
                    ko_paths=ko_paths, module_basedir=basedir, headers=headers,
                    on_demand=on_demand,
                )
                host_files = result.build_info.pop("_host_files") + [str(p) for p in ko_paths]
                host_files += [str(p) for group in on_demand.values() for p in group]
                info = {
                    "uncompressed_size": result.uncompressed_size,
                    "compressed_size": result.compressed_size,
                    "compression": opts.compression,
                    "headers_segment_size": result.headers_segment_size,
                    "headers": headers.info() if headers else None,
                    **result.build_info,
                }
                cache.write_json(tmp / "inputs.json", {
                    "host_files": cache.fingerprints(host_files),
                    "info": info,
                })
        finally:
            shutil.rmtree(work, ignore_errors=True)
    _prune(cache_dir / "initrd", KEEP_CACHED["initrd"], entry)
    return image, dict(info, cached=False)


def build_rootfs(opts: BuildOptions, cache_dir: Path) -> tuple[Path, dict]:
    if opts.rootfs_image is not None:
        return Path(opts.rootfs_image), {"source": str(opts.rootfs_image), "format": "erofs",
                                         "cached": True}
    h = cache.Hasher("rootfs").add("builder", builder_hash()).add("format", opts.rootfs_format)
    bb_binary = boot = None
    if opts.rootfs is None and opts.base == "debian":
        kind, boot = "debian", debian.describe(cache_dir)
        h.add("debian", boot.key)
        what = boot.what
    elif opts.rootfs is None:
        bb_info, bb_binary = busybox.fetch(cache_dir)
        kind = "busybox"
        h.add("busybox", [bb_info.package, bb_info.version])
        what = f"busybox ({bb_info.version})"
    else:
        src = Path(opts.rootfs)
        kind = rootfs_mod.check_source(src)
        with log.step(f"Hashing rootfs source {src}"):
            h.add(kind, [str(src.resolve()), rootfs_mod.source_key(src, kind)])
        what = str(src)
    key = h.hexdigest()
    entry = cache_dir / "rootfs" / key
    image = entry / ROOTFS_NAME
    if not opts.force and (entry / "inputs.json").is_file() and image.is_file():
        log.info(f"rootfs: cached ({entry})")
        os.utime(entry)
        return image, dict(cache.read_json(entry / "inputs.json") or {}, cached=True)

    with log.step(f"Building rootfs ({opts.rootfs_format}) from {what}"):
        work = _work_dir(cache_dir)
        try:
            if kind == "busybox":
                tree = work / "rootfs"
                tree.mkdir()
                n = busybox.stage(tree, bb_binary)
                log.info(f"busybox with {n} applet links")
            elif kind == "debian":
                tree = work / "rootfs"
                debian.stage(debian.bootstrap(boot, work, force=opts.force), tree)
                _prune(cache_dir / "debian", KEEP_CACHED["debian"], boot.entry)
            elif kind == "tar":
                tree = work / "rootfs"
                with log.step(f"Extracting {opts.rootfs}"):
                    rootfs_mod.extract_tarball(Path(opts.rootfs), tree)
            else:
                tree = Path(opts.rootfs)
            with cache.publishing_dir(entry) as tmp:
                rootfs_mod.make_image(tree, tmp / ROOTFS_NAME, opts.rootfs_format, key=key,
                                      epoch=REPRODUCIBLE_EPOCH.get(kind))
                info = {"source": what, "format": opts.rootfs_format, "key": key,
                        "size": (tmp / ROOTFS_NAME).stat().st_size,
                        "tree_size": rootfs_mod.content_size(tree)[0]}
                cache.write_json(tmp / "inputs.json", info)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    _prune(cache_dir / "rootfs", KEEP_CACHED["rootfs"], entry)
    return image, dict(info, cached=False)


def build_all(opts: BuildOptions) -> Artifacts:
    _validate(opts)
    out_dir = Path(opts.out_dir)
    cache_dir = Path(opts.cache_dir) if opts.cache_dir else cache.default_cache_dir()
    cache.ensure_dir(out_dir)
    debs.use_memo(cache_dir)
    with log.step("Building Kindling images"):
        with cache.locked(cache_dir):
            with log.step("Resolving the kernel"):
                kern = kernel_mod.resolve(opts.kernel, opts.modules, cache_dir)
                log.info(f"kernel {kern.release} ({kern.origin})")
            headers = (headers_mod.build(kern, cache_dir, builder_hash(), force=opts.force)
                       if opts.headers else None)
            if headers is not None:
                os.utime(headers.tarball.parent)  # most recently used
                _prune(cache_dir / headers_mod.CACHE_KIND, KEEP_CACHED["headers"], headers.tarball.parent)
            initrd_src, initrd_info = build_initrd(opts, cache_dir, kern, headers)
            rootfs_src, rootfs_info = build_rootfs(opts, cache_dir)
            kernel_out = out_dir / KERNEL_NAME
            initrd_out = out_dir / INITRD_NAME
            rootfs_out = out_dir / ROOTFS_NAME
            _publish(kernel_mod.pvh_kernel(kern, cache_dir), kernel_out)
            _publish(initrd_src, initrd_out)
            _publish(rootfs_src, rootfs_out)
    return Artifacts(
        kernel=kernel_out,
        initrd=initrd_out,
        rootfs=rootfs_out,
        kernel_release=kern.release,
        info={"kernel_origin": kern.origin, "modules_dir": str(kern.modules_dir),
              "initrd": initrd_info, "rootfs": rootfs_info, "headers": initrd_info.get("headers"),
              "command": image_command(opts.base, opts.rootfs)},
    )
