"""Assembling the initrd: staging tree -> newc cpio -> compression.

Contents: the Python runtime (pyruntime), the kernel-module closure (kmod),
/init (the repo's initsys/init), a few device nodes and empty directories,
and /usr/lib/kindling/build.json describing the build.

The kernel-headers tarball (image_build/headers.py), when there is one, goes
into a separate *uncompressed* newc segment in front of the compressed one:
it is compressed already, and under TCG the kernel would spend time
decompressing it a second time for nothing.  The kernel's initramfs unpacker
takes any sequence of plain and compressed cpio archives
(Documentation/driver-api/early-userspace/buffer-format.rst); a plain one
first is the layout of early-microcode initrds.  It goes first, not last,
because a legacy-format lz4 stream has no end marker: the kernel's unlz4
reads chunk headers until the input ends (or a zero word), so a segment
right after it would be taken for lz4 chunks.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from image_build import cpio, kmod, log, pyruntime
from image_build.errors import BuildError
from image_build.run import run

COMPRESSIONS = ("gzip", "zstd", "lz4", "none")
# Uncompressed by default: under TCG the kernel's unlz4 of the ~10 MiB main archive cost
# ~0.5 s of every boot's `kernel` stage (create -> Running 11.46 -> 10.78 s, interleaved runs,
# issue 14), and under KVM decompressing costs more than copying the bytes too.  The price:
# ~12 MiB more in the build cache and, after the kernel frees (and poisons) the initrd's
# pages, in a snapshot that saves them.  `kindling build --compression` picks another.
DEFAULT_COMPRESSION = "none"

DEVICE_NODES = [
    # name, major, minor, permissions
    ("dev/console", 5, 1, 0o600),
    ("dev/null", 1, 3, 0o666),
    ("dev/urandom", 1, 9, 0o666),
    ("dev/random", 1, 8, 0o666),
    ("dev/tty", 5, 0, 0o666),
]
EMPTY_DIRS = ["proc", "sys", "dev", "run", "tmp", "newroot", "mnt", "etc"]
STICKY_DIRS = {"tmp": 0o1777}

INIT_SOURCE = Path("initsys") / "init"
BUILD_JSON = "usr/lib/kindling/build.json"

COMPRESS_TIMEOUT = 900

PLACEHOLDER_INIT = b"""#!/usr/bin/python3.11 -IS
# Placeholder written by image_build because the repo has no initsys/init yet.
import ctypes, os, sys
sys.path.insert(0, "/usr/lib/kindling")
print("kindling: placeholder /init running", sys.version.split()[0], flush=True)
libc = ctypes.CDLL(None, use_errno=True)
libc.sync()
libc.reboot(0x4321FEDC)  # RB_POWER_OFF
"""


@dataclass
class InitrdResult:
    path: Path
    uncompressed_size: int   # the main cpio archive
    compressed_size: int     # the whole file
    build_info: dict
    headers_segment_size: int = 0


def stage_init(stage: Path, repo_root: Path) -> Path | None:
    """Put /init in the staging tree; returns the repo script it came from
    (None when the placeholder was used)."""
    src = repo_root / INIT_SOURCE
    dest = stage / "init"
    if src.is_file():
        head = src.read_bytes()[:64]
        if not head.startswith(b"#!"):
            raise BuildError(f"{src}: /init must start with a #! line (expected `#!/usr/bin/python3.11 -IS`)")
        shutil.copyfile(src, dest)
        os.chmod(dest, 0o755)
        return src
    log.warn(f"{src} does not exist yet: the initrd gets a placeholder /init (it only prints and powers off)")
    dest.write_bytes(PLACEHOLDER_INIT)
    os.chmod(dest, 0o755)
    return None


def stage_tree(stage: Path, *, repo_root: Path, site: Path, kernel_release: str,
               ko_paths: list[Path], module_basedir: Path, work: Path,
               on_demand: dict[str, list[Path]] | None = None) -> dict:
    """Fill `stage` with everything but the device nodes; returns build info.
    `on_demand`: module groups loaded only when the config asks (kmod.ON_DEMAND_MODULES)."""
    init_src = stage_init(stage, repo_root)
    runtime = pyruntime.stage_runtime(stage, site, repo_root, work, init_src)
    soft = kmod.soft_only(module_basedir, kernel_release)
    modules, soft_modules = kmod.stage(ko_paths, module_basedir, kernel_release, stage, soft)
    on_demand_modules = kmod.stage_on_demand(on_demand or {}, module_basedir, kernel_release, stage)
    for d in EMPTY_DIRS:
        (stage / d).mkdir(exist_ok=True)
    for d, mode in STICKY_DIRS.items():
        os.chmod(stage / d, mode)
    info = {
        "kernel_release": kernel_release,
        "modules": modules,
        "softdep_modules": soft_modules,
        "on_demand_modules": on_demand_modules,
        "python_version": runtime.python_version,
        "deps": runtime.deps,
        "init": str(INIT_SOURCE) if init_src else "placeholder",
        "stdlib_files": len(runtime.stdlib_files),
        "libraries": sorted(os.path.basename(p) for p in runtime.libraries),
    }
    bj = stage / BUILD_JSON
    bj.parent.mkdir(parents=True, exist_ok=True)
    bj.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    info["_host_files"] = runtime.host_files
    return info


def archive_entries(stage: Path) -> list[cpio.Entry]:
    entries = cpio.entries_from_tree(stage)
    for name, major, minor, perm in DEVICE_NODES:
        entries.append(cpio.chardev(name, major, minor, perm))
    return entries


def write_cpio(stage: Path, dest: Path) -> int:
    with open(dest, "wb") as f:
        return cpio.write(archive_entries(stage), f)


def compress(src: Path, dest: Path, method: str) -> None:
    """Compress deterministically into `dest` (same input -> same bytes)."""
    if method not in COMPRESSIONS:
        raise BuildError(f"unknown compression {method!r}: expected one of {', '.join(COMPRESSIONS)}")
    if dest.exists():
        dest.unlink()
    if method == "none":
        shutil.copyfile(src, dest)
    elif method == "gzip":
        with open(src, "rb") as fin, open(dest, "wb") as raw:
            # filename="" and mtime=0: no name or time in the header
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
                shutil.copyfileobj(fin, gz, 1 << 20)
    elif method == "zstd":
        run(["zstd", "-q", "-19", "-T1", "--no-progress", "-f", "-o", dest, src], timeout=COMPRESS_TIMEOUT)
    elif method == "lz4":
        # -l: the legacy frame format, the one the kernel's unpacker accepts
        run(["lz4", "-q", "-l", "-9", "-f", src, dest], timeout=COMPRESS_TIMEOUT)
    os.chmod(dest, 0o644)


def headers_segment(tarball: Path, path_in_initrd: str) -> list[cpio.Entry]:
    """The uncompressed segment: the tarball and its parent directories."""
    name = path_in_initrd.strip("/")
    parts = name.split("/")
    dirs = ["/".join(parts[:i]) for i in range(1, len(parts))]
    return [cpio.directory(d) for d in dirs] + [cpio.file(name, tarball, 0o644)]


def assemble(out: Path, main: Path, headers=None) -> int:
    """`out` = the headers segment (when `headers`, an image_build.headers.Headers) followed
    by the compressed main archive `main`; returns the segment's size."""
    segment = 0
    with open(out, "wb") as f:
        if headers is not None:
            segment = cpio.write(headers_segment(headers.tarball, headers.path_in_initrd), f)
        with open(main, "rb") as m:
            shutil.copyfileobj(m, f, 1 << 20)
    os.chmod(out, 0o644)
    return segment


def build_initrd(out: Path, *, work: Path, compression: str, headers=None, **stage_args) -> InitrdResult:
    """`headers`: an image_build.headers.Headers (or None) for the uncompressed segment."""
    if compression not in COMPRESSIONS:
        raise BuildError(f"unknown compression {compression!r}: expected one of {', '.join(COMPRESSIONS)}")
    stage = work / "stage"
    stage.mkdir()
    info = stage_tree(stage, work=work, **stage_args)
    raw = work / "initrd.cpio"
    with log.step("Writing cpio archive"):
        size = write_cpio(stage, raw)
    main = work / "initrd.main"
    with log.step(f"Compressing initrd ({compression})"):
        compress(raw, main, compression)
    segment = assemble(out, main, headers)
    csize = out.stat().st_size
    log.info(f"initrd: {log.human_size(size)} uncompressed, {log.human_size(csize)} {compression}"
             + (f" (with {log.human_size(segment)} of kernel headers, uncompressed)" if segment else ""))
    return InitrdResult(out, size, csize, info, segment)

