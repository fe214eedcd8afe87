"""Basic mounts of the initramfs and the bind mounts into the new root."""

import os

from initsys import libc

NEWROOT = "/newroot"

_NOSUID_NODEV_NOEXEC = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC

# (source, target, fstype, flags, options) in order.
BASIC_MOUNTS = (
    ("proc", "/proc", "proc", _NOSUID_NODEV_NOEXEC, None),
    ("sysfs", "/sys", "sysfs", _NOSUID_NODEV_NOEXEC, None),
    ("devtmpfs", "/dev", "devtmpfs", libc.MS_NOSUID, "mode=0755"),
    ("devpts", "/dev/pts", "devpts", libc.MS_NOSUID | libc.MS_NOEXEC, "gid=5,mode=620,ptmxmode=666"),
    ("tmpfs", "/dev/shm", "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=1777"),
    ("tmpfs", "/run", "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=0755"),
    ("cgroup2", "/sys/fs/cgroup", "cgroup2", _NOSUID_NODEV_NOEXEC, None),
)


def is_mountpoint(path):
    try:
        return os.stat(path).st_dev != os.stat(os.path.join(path, "..")).st_dev
    except OSError:
        return False


def mount_basic():
    for source, target, fstype, flags, options in BASIC_MOUNTS:
        os.makedirs(target, exist_ok=True)
        if fstype == "devtmpfs" and is_mountpoint(target):
            continue  # CONFIG_DEVTMPFS_MOUNT may have done it
        libc.mount(source, target, fstype, flags, options)


def bind_into_newroot(newroot=NEWROOT):
    """Give the new root /proc, /sys, /dev (with pts and shm) and a fresh /run."""
    for sub in ("proc", "sys", "dev"):
        target = os.path.join(newroot, sub)
        os.makedirs(target, exist_ok=True)
        libc.mount("/" + sub, target, None, libc.MS_BIND | libc.MS_REC)
    run = os.path.join(newroot, "run")
    os.makedirs(run, exist_ok=True)
    libc.mount("tmpfs", run, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=0755")
    os.makedirs(os.path.join(run, "kindling"), mode=0o755, exist_ok=True)  # status and ready files
