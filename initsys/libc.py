"""Thin ctypes bindings to the few libc calls PID 1 needs (mount, reboot, syscalls).

There is no util-linux or busybox in the initrd: PID 1 talks to the kernel
directly.  Every failure raises OSError naming the operation and its arguments.
"""

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)  # the interpreter links libc; no ldconfig needed

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

RB_POWER_OFF = 0x4321FEDC
SYS_FINIT_MODULE = 313  # x86_64
SYS_IOPRIO_SET = 251  # x86_64
IOPRIO_WHO_PROCESS = 1
IOPRIO_CLASS_SHIFT = 13
SYSLOG_ACTION_READ_ALL = 3


def _check(result, what):
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _b(value):
    return None if value is None else os.fsencode(value)


def mount(source, target, fstype, flags=0, options=None):
    _check(_libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(options)),
           f"mount {source} on {target} (type {fstype}, options {options or '-'})")


def umount(target, flags=0):
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def finit_module(fd, params=b""):
    return _check(_libc.syscall(SYS_FINIT_MODULE, fd, ctypes.c_char_p(params), 0), "finit_module")


def ioprio_set(which, who, ioprio):
    """ioprio_set(2): e.g. (IOPRIO_WHO_PROCESS, 0, 3 << IOPRIO_CLASS_SHIFT) = this process, idle."""
    return _check(_libc.syscall(SYS_IOPRIO_SET, which, who, ioprio), f"ioprio_set({which}, {who}, {ioprio:#x})")


def reboot(cmd):
    return _check(_libc.reboot(cmd), "reboot")


def kernel_log():
    """The kernel ring buffer (dmesg) as text, or '' when it cannot be read."""
    size = 1 << 20
    buf = ctypes.create_string_buffer(size)
    n = _libc.klogctl(SYSLOG_ACTION_READ_ALL, buf, size)
    if n <= 0:
        return ""
    return buf.raw[:n].decode("utf-8", "replace")
