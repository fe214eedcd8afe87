"""Which kernel to boot, and where its modules are.

Without --kernel: Debian's cloud kernel.  `linux-image-cloud-amd64` is
resolved to its versioned package, which is downloaded and extracted into the
cache; the kernel is boot/vmlinuz-<rel> and the modules lib/modules/<rel>.
With --kernel, --modules (a lib/modules/<rel> directory) is required; the
release is that directory's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from image_build import cache, debs, log
from image_build.errors import BuildError

CLOUD_KERNEL_META = "linux-image-cloud-amd64"


@dataclass(frozen=True)
class Kernel:
    vmlinuz: Path
    modules_dir: Path  # .../lib/modules/<release>
    release: str
    origin: str  # e.g. "linux-image-6.1.0-57-cloud-amd64 6.1.192-3" or "--kernel PATH"
    package: debs.DebInfo | None = None  # the Debian package it came from (None: --kernel)


def resolve(kernel: Path | None, modules: Path | None, cache_dir: Path) -> Kernel:
    if kernel is None:
        if modules is not None:
            raise BuildError("--modules was given without --kernel; give both, or neither to use Debian's cloud kernel")
        return debian_cloud_kernel(cache_dir)
    return given_kernel(Path(kernel), modules)


def given_kernel(kernel: Path, modules: Path | None) -> Kernel:
    if not kernel.is_file():
        raise BuildError(f"--kernel {kernel}: no such file (expected a vmlinuz/bzImage)")
    if modules is None:
        raise BuildError(
            f"--kernel {kernel} needs --modules DIR: the kernel's lib/modules/<release> directory"
            " (the initrd must carry modules built for this exact kernel)"
        )
    modules = Path(modules)
    if not modules.is_dir():
        raise BuildError(f"--modules {modules}: no such directory (expected lib/modules/<release>)")
    check_modules_dir(modules, f"--modules {modules}")
    release = modules.resolve().name
    found = bzimage_version(kernel)
    if found is not None and found.split()[0] != release:
        log.warn(f"--kernel {kernel} says it is release {found.split()[0]!r}, but --modules is for {release!r}")
    return Kernel(kernel, modules, release, f"--kernel {kernel}")


def check_modules_dir(modules: Path, what: str) -> None:
    if not (modules / "kernel").is_dir() and not (modules / "modules.dep").is_file():
        raise BuildError(
            f"{what}: does not look like a lib/modules/<release> directory"
            " (it has neither a kernel/ subdirectory nor modules.dep)"
        )


def debian_cloud_kernel(cache_dir: Path) -> Kernel:
    debs.require_apt(
        "no --kernel was given, and Debian's cloud kernel cannot be fetched without apt;"
        " pass --kernel VMLINUZ --modules DIR"
    )
    package = debs.resolve_metapackage(CLOUD_KERNEL_META, "linux-image-")
    info, root = debs.fetch_and_extract(package, cache_dir, "kernel")
    mod_root = root / "lib" / "modules"
    releases = sorted(p.name for p in mod_root.iterdir()) if mod_root.is_dir() else []
    if len(releases) != 1:
        raise BuildError(f"{package}: expected exactly one directory in {mod_root}, found {releases}")
    release = releases[0]
    vmlinuz = root / "boot" / f"vmlinuz-{release}"
    if not vmlinuz.is_file():
        raise BuildError(f"{package}: {vmlinuz} missing from the extracted package")
    return Kernel(vmlinuz, mod_root / release, release, f"{info.package} {info.version}", info)


def bzimage_version(path: Path) -> str | None:
    """The version string in a bzImage's setup header, or None if not a bzImage."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x4000)
            if head[0x202:0x206] != b"HdrS":
                return None
            off = int.from_bytes(head[0x20E:0x210], "little") + 0x200
            f.seek(off)
            raw = f.read(256).split(b"\0", 1)[0]
        return raw.decode("ascii", "replace") or None
    except OSError:
        return None


def copy_kernel(kernel: Kernel, dest: Path) -> Path:
    cache.install_file(kernel.vmlinuz, dest)
    return dest



# --- PVH: boot the uncompressed ELF ------------------------------------------
#
# QEMU boots an uncompressed vmlinux through its PVH entry point (an ELF note,
# CONFIG_PVH=y in Debian's kernels), skipping the bzImage's real-mode setup and
# self-decompression.  ENVIRONMENT.md measured ~0.2 s less to PID 1 under TCG.
# The ELF is the bzImage payload (setup header fields payload_offset/length),
# decompressed with the tool its magic names; the build appends the 4-byte
# decompressed size, which the decompressors do not want.

XEN_ELFNOTE_PHYS32_ENTRY = 18
_PAYLOAD_FORMATS = (
    (b"\x02\x21\x4c\x18", "lz4", ["lz4", "-d", "-q", "-f"]),
    (b"\x28\xb5\x2f\xfd", "zstd", ["zstd", "-d", "-q", "-f", "-o"]),
)


def bzimage_payload(path: Path) -> tuple[bytes, str, list[str]] | None:
    """The compressed kernel inside a bzImage and how to decompress it, or None."""
    data = path.read_bytes()
    if data[0x202:0x206] != b"HdrS" or len(data) < 0x250:
        return None
    setup_sects = data[0x1F1] or 4
    offset = int.from_bytes(data[0x248:0x24C], "little")
    length = int.from_bytes(data[0x24C:0x250], "little")
    start = (setup_sects + 1) * 512 + offset
    payload = data[start:start + length]
    for magic, name, argv in _PAYLOAD_FORMATS:
        if payload.startswith(magic):
            return payload[:-4], name, argv
    return None


def has_pvh_note(elf: Path) -> bool:
    """True when the ELF carries XEN_ELFNOTE_PHYS32_ENTRY (QEMU's PVH boot)."""
    import struct
    with open(elf, "rb") as f:
        head = f.read(64)
        if head[:5] != b"\x7fELF\x02":
            return False
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        phdrs = f.read(phentsize * phnum)
        for i in range(phnum):
            p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", phdrs, i * phentsize)
            if p_type != 4:  # PT_NOTE
                continue
            f.seek(p_offset)
            notes = f.read(p_filesz)
            pos = 0
            while pos + 12 <= len(notes):
                namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
                name = notes[pos + 12:pos + 12 + namesz].rstrip(b"\0")
                if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                    return True
                pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def pvh_kernel(kernel: Kernel, cache_dir: Path) -> Path:
    """The uncompressed PVH-bootable vmlinux for `kernel` (cached), or the
    bzImage itself when it cannot be extracted or has no PVH entry."""
    from image_build.run import run

    st = kernel.vmlinuz.stat()
    entry = cache.ensure_dir(cache_dir / "vmlinux" / f"{kernel.release}-{st.st_size}-{st.st_mtime_ns}")
    out = entry / "vmlinux"
    if out.is_file():
        return out
    found = bzimage_payload(kernel.vmlinuz)
    if found is None:
        log.info(f"{kernel.vmlinuz}: payload format not recognised; booting the bzImage")
        return kernel.vmlinuz
    payload, fmt, argv = found
    with log.step(f"Extracting the uncompressed kernel ({fmt}) for PVH boot"):
        packed = entry / f"payload.{fmt}"
        packed.write_bytes(payload)
        tmp = entry / "vmlinux.tmp"
        run([*argv, packed, tmp], timeout=120)
        packed.unlink()
        if not has_pvh_note(tmp):
            tmp.unlink()
            log.info("the kernel has no PVH entry note; booting the bzImage")
            return kernel.vmlinuz
        tmp.replace(out)
    return out
