"""The new root: an overlay of the read-only image (vda) and the writable disk (vdb)."""

import os

from initsys import libc, mounts
from initsys.devices import fs_type

LOWER = "/mnt/lower"
OVERLAY_DISK = "/mnt/overlay"


def mount_readonly(device, target, what):
    """Mount an erofs or ext4 device read-only (ext4 without journal replay)."""
    kind = fs_type(device)
    if kind is None:
        raise OSError(f"{what} {device}: not an erofs or ext4 filesystem")
    os.makedirs(target, exist_ok=True)
    libc.mount(device, target, kind, libc.MS_RDONLY, "noload" if kind == "ext4" else None)
    return kind


def assemble(rootfs_dev, overlay_dev, newroot=mounts.NEWROOT):
    mount_readonly(rootfs_dev, LOWER, "rootfs disk")
    if fs_type(overlay_dev) != "ext4":
        raise OSError(f"overlay disk {overlay_dev}: expected an ext4 filesystem")
    os.makedirs(OVERLAY_DISK, exist_ok=True)
    libc.mount(overlay_dev, OVERLAY_DISK, "ext4", 0, None)
    upper, work = OVERLAY_DISK + "/upper", OVERLAY_DISK + "/work"
    os.makedirs(upper, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    os.makedirs(newroot, exist_ok=True)
    # index/metacopy off: the upper dir is reused across boots (STYLE.md).
    libc.mount("overlay", newroot, "overlay", 0,
               f"lowerdir={LOWER},upperdir={upper},workdir={work},index=off,metacopy=off")
