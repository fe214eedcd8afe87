"""Volumes: named ext4 images (`kindling volume create/list/rm`) and `--volume` specs.

create/list_volumes/remove/info are what the CLI and the Python API both call;
`remove` refuses a volume an instance (any state but deleted) attaches.

A volume image lives in $KINDLING_HOME/volumes/<name>.img (or is any path).
`--volume IMAGE:/path[:ro|rw|overlay]` attaches it after the three boot disks,
so volumes get /dev/vdd, /dev/vde, ... in order, each with `serial=vol-<n>`;
an `overlay` volume also gets a fresh per-instance ext4 disk for its writes,
so the base image is never modified.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import sizes
from .errors import Conflict, NotFound, build_errors, die

MODES = ("ro", "rw", "overlay")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MIN_SIZE = 1 << 20          # image_build.disks.MIN_DISK: mkfs.ext4 needs room
OVERLAY_SIZE = 256 << 20
FIRST_VOLUME_LETTER = "d"  # vda rootfs, vdb overlay, vdc config


@dataclass(frozen=True)
class VolumeSpec:
    image: Path
    path: str
    mode: str = "rw"


def volumes_dir(home: Path) -> Path:
    return home / "volumes"


def image_for(home: Path, name_or_path: str) -> Path:
    """A volume name (looked up in the volumes dir) or a path to an image file."""
    if "/" not in name_or_path and NAME_RE.match(name_or_path):
        named = volumes_dir(home) / f"{name_or_path}.img"
        if named.exists() or not Path(name_or_path).exists():
            return named
    return Path(name_or_path)


def parse_spec(home: Path, text: str) -> VolumeSpec:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        die(f"--volume {text!r}: expected IMAGE:/path[:ro|rw|overlay]")
    image, path = image_for(home, parts[0]), parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if not path.startswith("/"):
        die(f"--volume {text!r}: the guest path {path!r} must be absolute")
    if mode not in MODES:
        die(f"--volume {text!r}: mode {mode!r} is not one of {', '.join(MODES)}")
    if not image.is_file():
        named = "/" not in parts[0] and NAME_RE.match(parts[0])
        die(f"--volume {text!r}: volume image {image} not found",
            hint=f"create one with `kindling volume create {parts[0]} --size 64M`" if named
            else "give an existing ext4 image, or a volume name (`kindling volume list`)")
    return VolumeSpec(image.absolute(), path, mode)


def create(home: Path, name: str, size: str | int) -> "VolumeInfo":
    """A new empty ext4 volume NAME of `size` (bytes, or a text like 64M)."""
    from image_build.disks import make_volume

    check_name(name)
    nbytes = sizes.parse_size(size, "--size")
    if nbytes < MIN_SIZE:
        die(f"--size {size}: a volume needs at least {sizes.human(MIN_SIZE)} ({MIN_SIZE} bytes)",
            hint=f"kindling volume create {name} --size 64M")
    image = volumes_dir(home) / f"{name}.img"
    if image.exists():
        raise Conflict(f"volume {name!r} already exists: {image}")
    image.parent.mkdir(parents=True, exist_ok=True)
    with build_errors(f"volume {name}"):
        make_volume(image, nbytes)
    return info(home, name)


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        die(f"invalid volume name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    return name


@dataclass(frozen=True)
class VolumeInfo:
    """One named volume, as `kindling volume create/list/rm --json` prints it."""
    name: str
    path: Path
    size: int                     # the image's size in bytes (sparse: its apparent size)
    used_by: tuple[str, ...]      # the names of the instances that attach it

    def to_json(self) -> dict:
        return {"name": self.name, "path": str(self.path), "size": self.size,
                "used_by": list(self.used_by)}


def users(home: Path, image: Path) -> tuple[str, ...]:
    """The instances (names) that attach `image`, in any state but deleted: by the volumes
    in their options, or (instances made before options were kept) their QEMU argv."""
    from . import metadata
    from .qemu import opt_value
    target = os.path.realpath(image)
    return tuple(meta.name for _, meta in metadata.load_all(home)
                 if any(os.path.realpath(v.get("image", "")) == target
                        for v in meta.options.get("volumes") or ())
                 or any(f"file={opt_value(image.absolute())}," in arg for arg in meta.argv))


def info(home: Path, name: str) -> VolumeInfo:
    image = volumes_dir(home) / f"{check_name(name)}.img"
    try:
        size = image.stat().st_size
    except FileNotFoundError:
        raise NotFound(f"no such volume: {name}", hint="`kindling volume list` shows the volumes in "
                                            f"{volumes_dir(home)}")
    return VolumeInfo(name, image, size, users(home, image))


def list_volumes(home: Path) -> list[VolumeInfo]:
    """The named volumes in $KINDLING_HOME/volumes, by name."""
    try:
        names = sorted(e[:-4] for e in os.listdir(volumes_dir(home)) if e.endswith(".img"))
    except FileNotFoundError:
        return []
    return [info(home, n) for n in names if NAME_RE.match(n)]


def remove(home: Path, name: str) -> VolumeInfo:
    """Remove volume NAME; refused while an instance (not deleted) attaches it."""
    volume = info(home, name)
    if volume.used_by:
        raise Conflict(f"volume {name} is in use by instance"
                       f"{'s' if len(volume.used_by) > 1 else ''} {', '.join(volume.used_by)}",
                       hint=f"delete {'them' if len(volume.used_by) > 1 else 'it'} first: "
                            f"kindling delete {' '.join(volume.used_by)}")
    volume.path.unlink()
    return volume


def device_name(index: int) -> str:
    """The guest device of the index-th volume disk: /dev/vdd, /dev/vde, ..."""
    letter = ord(FIRST_VOLUME_LETTER) + index
    if letter > ord("z"):
        die("too many volume disks (at most 23)")
    return f"/dev/vd{chr(letter)}"


@dataclass(frozen=True)
class VolumeDisk:
    serial: str
    image: Path | None        # None: a fresh per-instance overlay disk (see materialize)
    readonly: bool


def layout(specs: list[VolumeSpec] | tuple[VolumeSpec, ...]) -> tuple[tuple[VolumeDisk, ...], list[dict]]:
    """The volume disks in device order (after the boot disks) and config.json's
    volume_mounts for them.  Pure: nothing is created."""
    disks: list[VolumeDisk] = []
    mounts = []
    for spec in specs:
        base = len(disks)
        disks.append(VolumeDisk(f"vol-{base}", spec.image, spec.mode != "rw"))
        entry = {"device": device_name(base), "path": spec.path, "mode": spec.mode}
        if spec.mode == "overlay":
            disks.append(VolumeDisk(f"vol-{base + 1}", None, False))
            entry["overlay_device"] = device_name(base + 1)
        mounts.append(entry)
    return tuple(disks), mounts


def materialize(disks: tuple[VolumeDisk, ...], instance_dir: Path) -> list[tuple[Path, str, bool]]:
    """(image, serial, readonly) per volume disk, making the overlay disks."""
    from image_build.disks import make_overlay_disk

    out = []
    for disk in disks:
        image = disk.image
        if image is None:
            image = instance_dir / f"volume-overlay-{disk.serial}.img"
            if not image.exists():  # kept across stop/start, like the root overlay
                make_overlay_disk(image, OVERLAY_SIZE)
        out.append((Path(image).absolute(), disk.serial, disk.readonly))
    return out
