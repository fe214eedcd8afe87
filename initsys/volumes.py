"""The volume stage: mount config.json's volume_mounts inside the new root.

Modes (PROTOCOL.md §2): `ro` -- ext4 read-only without journal replay; `rw`;
`overlay` -- the base device read-only with a writable overlay from
`overlay_device` on top; `nfs` (hypeman's newest hosts) -- the export
`nfs_host:nfs_export` over the network, NFSv4 over TCP with hypeman's options,
mounted once the network is up (stage `nfs`, initsys/stages.py).  Each device
is awaited on kernel uevents.  Any failure is fatal: a program must never start
with a volume missing and write into the empty directory underneath.

NFS is mounted with mount(2) itself, as the other modes are: the kernel's NFSv4
client needs only the server's address (`addr=`) and ours (`clientaddr=`) in the
option string, which mount.nfs would otherwise work out; the initrd has no
mount.nfs, and busybox's mount speaks only NFSv2/3.
"""

import errno
import os
import time

from initsys import kmod, libc
from initsys.devices import fs_type

# hypeman's guest: `mount -t nfs -o vers=4,tcp,hard,timeo=100,retrans=3 HOST:EXPORT PATH`
NFS_OPTIONS = "vers=4,tcp,hard,timeo=100,retrans=3"
# A server not up yet (the host may start it with the VM): the mount is tried again,
# every NFS_RETRY s, until the stage's limit (initsys/stages.py NFS_TIMEOUT).
NFS_NOT_YET = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT,
               errno.ECONNRESET, errno.EIO, errno.EAGAIN)
NFS_RETRY = 0.5

STAGING = "/mnt/volumes"


class VolumeError(OSError):
    pass


def _device_name(device):
    if not device.startswith("/dev/") or "/" in device[5:]:
        raise VolumeError(f"volume device {device!r}: expected /dev/<name>")
    return device[5:]


def on_disks(volumes):
    return [v for v in volumes if v.mode != "nfs"]


def over_nfs(volumes):
    return [v for v in volumes if v.mode == "nfs"]


def device_names(volumes):
    names = []
    for v in on_disks(volumes):
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
    """The volumes on disks (`nfs` ones: mount_nfs, once the network is up)."""
    for index, volume in enumerate(volumes):
        if volume.mode != "nfs":
            mount_one(index, volume, newroot)


def nfs_options(volume, client_ip):
    return f"{NFS_OPTIONS},addr={volume.nfs_host},clientaddr={client_ip}"


def _mount_nfs_retrying(source, target, options, deadline):
    while True:
        try:
            return libc.mount(source, target, "nfs4", 0, options)
        except OSError as e:
            if e.errno not in NFS_NOT_YET or time.monotonic() + NFS_RETRY > deadline:
                raise
        time.sleep(NFS_RETRY)   # a retry interval: nothing in the guest says when the server is up


def mount_nfs(volumes, newroot, client_ip, deadline):
    """The `nfs` volumes, in order; the NFS client modules are loaded first.  A server
    that refuses or cannot be reached is tried again until `deadline` (monotonic)."""
    nfs = over_nfs(volumes)
    if nfs:
        kmod.load_on_demand("nfs")
    for volume in nfs:
        source = f"{volume.nfs_host}:{volume.nfs_export}"
        target = target_of(newroot, volume.path)
        try:
            os.makedirs(target, exist_ok=True)
            _mount_nfs_retrying(source, target, nfs_options(volume, client_ip), deadline)
        except OSError as e:
            raise VolumeError(f"volume {source} (nfs) at {volume.path}: {e}") from None
