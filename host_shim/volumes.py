"""Volumes: named ext4 images (`kindling volume create`) and `--volume` specs.

A volume image lives in $KINDLING_HOME/volumes/<name>.img (or is any path).
`--volume IMAGE:/path[:ro|rw|overlay]` attaches it after the three boot disks,
so volumes get /dev/vdd, /dev/vde, ... in order, each with `serial=vol-<n>`;
an `overlay` volume also gets a fresh per-instance ext4 disk for its writes,
so the base image is never modified.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import die
from .metadata import load_all
from .qemu import opt_value

MODES = ("ro", "rw", "overlay")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SIZE_RE = re.compile(r"^(\d+)([KMGT]?)(i?B)?$", re.I)
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
OVERLAY_SIZE = 256 << 20
FIRST_VOLUME_LETTER = "d"  # vda rootfs, vdb overlay, vdc config


@dataclass(frozen=True)
class VolumeSpec:
    image: Path
    path: str
    mode: str = "rw"


def parse_size(text: str) -> int:
    m = SIZE_RE.match(text.strip())
    if not m or int(m.group(1)) == 0:
        die(f"invalid size {text!r}: expected a number with an optional K, M, G or T suffix (e.g. 64M)")
    return int(m.group(1)) * UNITS[m.group(2).upper()]


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
        die(f"--volume {text!r}: volume image {image} not found",
            hint=f"create one with `kindling volume create {parts[0]} --size 64M`")
    return VolumeSpec(image, path, mode)


def create(home: Path, name: str, size: int) -> Path:
    from image_build.disks import make_volume

    if not NAME_RE.match(name):
        die(f"invalid volume name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    image = volumes_dir(home) / f"{name}.img"
    if image.exists():
        die(f"volume {name!r} already exists: {image}")
    image.parent.mkdir(parents=True, exist_ok=True)
    make_volume(image, size)
    return image


@dataclass(frozen=True)
class Volume:
    """A named volume in $KINDLING_HOME/volumes."""
    name: str
    path: Path
    size: int                 # bytes (the image's apparent size; it is sparse)


def list_volumes(home: Path) -> list[Volume]:
    """The named volumes, by name."""
    found = []
    for image in sorted(volumes_dir(home).glob("*.img")):
        found.append(Volume(image.name[:-len(".img")], image, image.stat().st_size))
    return found


def _users(home: Path, image: Path) -> list[str]:
    """Names of the instances whose QEMU command line attaches `image`."""
    needle = f"file={opt_value(image.absolute())},"
    return [meta.name for _, meta in load_all(home) if any(needle in a for a in meta.argv)]


def remove(home: Path, name: str) -> None:
    """Delete the named volume; refused while an instance (running or not) uses it."""
    if not NAME_RE.match(name):
        die(f"invalid volume name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    image = volumes_dir(home) / f"{name}.img"
    if not image.exists():
        die(f"no volume named {name!r} in {volumes_dir(home)}")
    users = _users(home, image)
    if users:
        die(f"volume {name!r} is in use by instance {', '.join(users)}",
            hint=f"delete {'it' if len(users) == 1 else 'them'} first (`kindling delete NAME`)")
    image.unlink()


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
