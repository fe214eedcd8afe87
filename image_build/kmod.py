"""The kernel-module closure that goes into the initrd.

Resolved with the kernel's own metadata: `modprobe --show-depends` against
the module tree (after `depmod` on a copy in the cache when the tree has no
modules.dep, as Debian's packages don't ship it).  Softdeps appear in
modprobe's output as `insmod` lines and are kept; `builtin X` lines are
skipped.  The result is ordered dependencies-first and de-duplicated.
"""

from __future__ import annotations

import contextlib
import gzip
import lzma
import os
import shutil
import tempfile
from functools import partial
from pathlib import Path

from image_build import cache, log
from image_build.errors import BuildError
from image_build.run import run
from initsys.kmod import on_demand_list

WANTED_MODULES = [
    "virtio_pci",
    "virtio_mmio",  # -machine microvm: virtio devices on MMIO, found through ACPI
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "vmw_vsock_virtio_transport",
    "overlay",
    "erofs",
    "button",  # ACPI power button: the host's graceful stop (initsys/powerbutton.py)
    "evdev",   # ... read by PID 1 from /dev/input/eventN
]

# Loaded only when config.json asks for them (initsys/kmod.py `load_on_demand`), so
# they cost the boot nothing otherwise: the NFS client for `mode: nfs` volumes (NFSv4,
# with sunrpc, lockd, dns_resolver... as its closure says).  A kernel without them
# (a custom --kernel) gets an initrd without the list; such a mount then fails naming it.
ON_DEMAND_MODULES = {"nfs": ["nfsv4"]}
# ... and kept xz-packed there (the NFS group is 5.3 MiB plain, a fifth of the initrd):
# the boot never reads them, and the kernel (CONFIG_MODULE_DECOMPRESS off in Debian 12's)
# cannot take them packed, so initsys/kmod.py unpacks one into a memfd when needed.
PACKED_SUFFIX = ".xz"

# In the initrd (merged /usr: /lib -> usr/lib).
INITRD_MODULES_ROOT = "/usr/lib/modules"
INITRD_MODULES_LIST = "/usr/lib/kindling/modules.list"
# The subset of modules.list that is there only as a soft dependency (e.g.
# crc32c-intel for libcrc32c): loading it may fail (ENODEV on a CPU without
# SSE4.2) and that is fine, as modprobe's own users expect.
INITRD_SOFTDEP_LIST = "/usr/lib/kindling/modules.softdep"

COMPRESSED_SUFFIXES = (".ko.xz", ".ko.zst", ".ko.gz")

DEPMOD_TIMEOUT = 300
MODPROBE_TIMEOUT = 60
DECOMPRESS_TIMEOUT = 60


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def module_basedir(modules_dir: Path, release: str, cache_dir: Path) -> Path:
    """A directory B with B/lib/modules/<release>/modules.dep, for `-b`/`-d`.

    The given tree is used in place when it already has modules.dep and the
    lib/modules/<release> layout; otherwise a hard-linked copy is made in the
    cache and depmod is run on the copy (the original is never modified).
    """
    modules_dir = Path(modules_dir).resolve()
    if (
        (modules_dir / "modules.dep").is_file()
        and modules_dir.name == release
        and modules_dir.parent.name == "modules"
        and modules_dir.parent.parent.name == "lib"
    ):
        return modules_dir.parent.parent.parent
    key = cache.Hasher("modules").add("path", str(modules_dir)).add(
        "tree", cache.tree_fingerprint(modules_dir)
    ).hexdigest()
    base = cache_dir / "modules" / f"{release}-{key}"
    if (base / ".complete").exists():
        return base
    with log.step(f"Running depmod for {release} (copy in cache)"):
        with cache.publishing_dir(base) as tmp:
            dest = tmp / "lib" / "modules" / release
            dest.parent.mkdir(parents=True)
            shutil.copytree(modules_dir, dest, symlinks=True, copy_function=_link_or_copy)
            if not (dest / "modules.dep").is_file():
                run(["depmod", "-b", tmp, release], timeout=DEPMOD_TIMEOUT)
            if not (dest / "modules.dep").is_file():
                raise BuildError(f"depmod -b {tmp} {release} did not write {dest / 'modules.dep'}")
            (tmp / ".complete").write_text(str(modules_dir) + "\n")
    return base


def show_depends(basedir: Path, release: str, name: str) -> list[Path]:
    """modprobe's load sequence for one module: .ko paths, dependencies first."""
    argv = ["modprobe", "--show-depends", "-d", basedir, "-S", release, name]
    try:
        proc = run(argv, timeout=MODPROBE_TIMEOUT)
    except BuildError as e:
        raise BuildError(f"kernel module {name!r} could not be resolved for kernel {release}:\n{e}") from None
    paths: list[Path] = []
    for line in proc.stdout.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "insmod" and len(words) >= 2:
            paths.append(Path(words[1]))
        elif words[0] == "builtin":
            continue
        else:
            log.warn(f"modprobe --show-depends {name}: ignoring unexpected line {line!r}")
    return paths


def closure(basedir: Path, release: str, wanted: list[str] = WANTED_MODULES) -> list[Path]:
    """The ordered, de-duplicated closure of `wanted` (absolute .ko paths)."""
    seen: set[Path] = set()
    order: list[Path] = []
    for name in wanted:
        for path in show_depends(basedir, release, name):
            if path not in seen:
                seen.add(path)
                order.append(path)
    return order


def read_modules_dep(basedir: Path, release: str) -> dict[str, list[str]]:
    """modules.dep as {relative .ko path: [relative paths of its hard deps]}."""
    dep_file = basedir / "lib" / "modules" / release / "modules.dep"
    deps: dict[str, list[str]] = {}
    for line in dep_file.read_text().splitlines():
        if ":" in line:
            mod, _, rest = line.partition(":")
            deps[mod.strip()] = rest.split()
    return deps


def soft_only(basedir: Path, release: str, wanted: list[str] = WANTED_MODULES) -> set[Path]:
    """Modules in the closure that no wanted module needs as a hard dependency
    (per modules.dep): they are there because of a softdep."""
    tree = basedir / "lib" / "modules" / release
    deps = read_modules_dep(basedir, release)
    hard: set[Path] = set()
    all_paths: set[Path] = set()
    for name in wanted:
        seq = show_depends(basedir, release, name)
        all_paths.update(seq)
        if not seq:
            continue  # built in
        target = seq[-1]  # modprobe prints the module itself last
        hard.add(target)
        rel = target.relative_to(tree).as_posix()
        for d in deps.get(rel, []):
            hard.add(tree / d)
    return all_paths - hard


def plain_name(rel: str) -> str:
    """kernel/x/y.ko.zst -> kernel/x/y.ko"""
    for suffix in COMPRESSED_SUFFIXES:
        if rel.endswith(suffix):
            return rel[: -len(suffix)] + ".ko"
    return rel


PACK_PRESET = 9 | lzma.PRESET_EXTREME    # lzma's default xz container, CRC64 check


@contextlib.contextmanager
def _plain(src: Path):
    """The module's plain ELF bytes as a readable binary file, whatever `src` is packed
    with.  zstd has no stdlib module (Python 3.11): the zstd CLI writes them to an
    anonymous temporary file, read from the start."""
    name = src.name
    if name.endswith(".ko.zst"):
        with tempfile.TemporaryFile(prefix="kindling-ko-") as plain:
            run(["zstd", "-q", "-d", "-c", src], stdout=plain, timeout=DECOMPRESS_TIMEOUT)
            plain.seek(0)
            yield plain
        return
    opener = lzma.open if name.endswith(".ko.xz") else gzip.open if name.endswith(".ko.gz") \
        else open
    with opener(src, "rb") as fin:
        yield fin


def _place(ko: Path, basedir: Path, release: str, stage_root: Path, packed: bool = False) -> str:
    """One module into the staging tree (decompressed; xz-packed again when `packed`:
    initsys/kmod.py unpacks such a module into memory to load it); its in-initrd path.
    A packed module is streamed from the source into the xz writer (no plain copy)."""
    tree = (basedir / "lib" / "modules" / release).resolve()
    try:
        rel = ko.resolve().relative_to(tree).as_posix()
    except ValueError:
        rel = ko.relative_to(basedir / "lib" / "modules" / release).as_posix()
    in_initrd = f"{INITRD_MODULES_ROOT}/{release}/{plain_name(rel)}" + (PACKED_SUFFIX if packed else "")
    dest = stage_root / in_initrd.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    writer = partial(lzma.open, preset=PACK_PRESET) if packed else open
    with _plain(ko) as fin, writer(dest, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    os.chmod(dest, 0o644)
    return in_initrd


def on_demand_closures(basedir: Path, release: str, boot: list[Path]) -> dict[str, list[Path]]:
    """Each ON_DEMAND_MODULES group's closure, less what the boot closure loads already;
    a group the kernel cannot resolve is left out (warned about)."""
    groups = {}
    for name, wanted in ON_DEMAND_MODULES.items():
        try:
            groups[name] = [p for p in closure(basedir, release, wanted) if p not in boot]
        except BuildError as e:
            log.warn(f"kernel {release}: no {name} modules in the initrd ({e})")
    return groups


def stage_on_demand(groups: dict[str, list[Path]], basedir: Path, release: str,
                    stage_root: Path) -> dict[str, list[str]]:
    """Write each on-demand group and its load list; returns their in-initrd paths."""
    staged = {}
    for name, ko_paths in groups.items():
        staged[name] = [_place(ko, basedir, release, stage_root, packed=True) for ko in ko_paths]
        lst = stage_root / on_demand_list(name).lstrip("/")
        lst.parent.mkdir(parents=True, exist_ok=True)
        lst.write_text("".join(p + "\n" for p in staged[name]))
    return staged


def stage(ko_paths: list[Path], basedir: Path, release: str, stage_root: Path,
          soft: set[Path] = frozenset()) -> tuple[list[str], list[str]]:
    """Write the closure into the staging tree (decompressed), plus
    modules.list (load order) and modules.softdep (the softdep-only subset).

    Returns the in-initrd paths of both lists.
    """
    initrd_paths: list[str] = []
    soft_paths: list[str] = []
    for ko in ko_paths:
        in_initrd = _place(ko, basedir, release, stage_root)
        initrd_paths.append(in_initrd)
        if ko in soft:
            soft_paths.append(in_initrd)
    lst = stage_root / INITRD_MODULES_LIST.lstrip("/")
    lst.parent.mkdir(parents=True, exist_ok=True)
    lst.write_text("".join(p + "\n" for p in initrd_paths))
    (stage_root / INITRD_SOFTDEP_LIST.lstrip("/")).write_text("".join(p + "\n" for p in soft_paths))
    return initrd_paths, soft_paths


def module_name(in_initrd_path: str) -> str:
    return Path(in_initrd_path).name[: -len(".ko")]
