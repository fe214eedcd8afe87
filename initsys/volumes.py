"""The volume stage: mount config.json's volume_mounts inside the new root.

Modes (PROTOCOL.md §2): `ro` -- ext4 read-only without journal replay; `rw`;
`overlay` -- the base device read-only with a writable overlay from
`overlay_device` on top.  Each device is awaited on kernel uevents.  Any
failure is fatal: a program must never start with a volume missing and write
into the empty directory underneath.
"""

import os

from initsys import libc
from initsys.devices import fs_type

STAGING = "/mnt/volumes"


class VolumeError(OSError):
    pass


def _device_name(device):
    if not device.startswith("/dev/") or "/" in device[5:]:
        raise VolumeError(f"volume device {device!r}: expected /dev/<name>")
    return device[5:]


def device_names(volumes):
    names = []
    for v in volumes:
        names.append(_device_name(v.device))
        if v.overlay_device:
            names.append(_device_name(v.overlay_device))
    return names


def _require_ext4(device, volume):
    kind = fs_type(device)
    if kind != "ext4":
        found = kind or "no recognisable filesystem"
        raise VolumeError(f"volume {device} for {volume.path}: expected an ext4 filesystem, found {found}")


def target_of(newroot, path):
    target = os.path.normpath(os.path.join(newroot, path.lstrip("/")))
    if target != newroot and not target.startswith(newroot.rstrip("/") + "/"):
        raise VolumeError(f"volume path {path!r} escapes the root")
    return target


def mount_one(index, volume, newroot):
    target = target_of(newroot, volume.path)
    _require_ext4(volume.device, volume)
    try:
        os.makedirs(target, exist_ok=True)
        if volume.mode == "ro":
            libc.mount(volume.device, target, "ext4", libc.MS_RDONLY, "noload")
        elif volume.mode == "rw":
            libc.mount(volume.device, target, "ext4", 0, None)
        else:
            _require_ext4(volume.overlay_device, volume)
            base = f"{STAGING}/{index}/base"
            disk = f"{STAGING}/{index}/overlay"
            os.makedirs(base, exist_ok=True)
            os.makedirs(disk, exist_ok=True)
            libc.mount(volume.device, base, "ext4", libc.MS_RDONLY, "noload")
            libc.mount(volume.overlay_device, disk, "ext4", 0, None)
            os.makedirs(f"{disk}/upper", exist_ok=True)
            os.makedirs(f"{disk}/work", exist_ok=True)
            libc.mount("overlay", target, "overlay", 0,
                       f"lowerdir={base},upperdir={disk}/upper,workdir={disk}/work,index=off,metacopy=off")
    except OSError as e:
        raise VolumeError(f"volume {volume.device} ({volume.mode}) at {volume.path}: {e}") from None


def mount_all(volumes, newroot):
    for index, volume in enumerate(volumes):
        mount_one(index, volume, newroot)
