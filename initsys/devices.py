"""Event-driven wait for block devices, with pyudev on the kernel's uevents.

There is no udevd in the initrd, so we subscribe to the *kernel* uevent source.
A wait first lists what exists (/sys/block): the block driver probes the disks
present while its module loads, so on a cold boot they are there once `modules`
is done.  Only when one is missing is the monitor started; then we enumerate
what exists again (coldplug: nothing is lost between the two) and wait on the
monitor's socket for the rest.  Nothing sleeps or polls: poll() or trio wakes
us when the netlink socket is readable.

Disks are identified by their virtio-blk serial (`/sys/block/X/serial`:
rootfs, overlay, config, vol-N) when the host set one, else by position
(vda, vdb, vdc) as PROTOCOL.md §1 says.
"""

import os
import select
import time

# libudev is loaded by path: ctypes.util.find_library needs ldconfig/gcc, absent here.
LIBRARIES = {"udev": "libudev.so.1", "libc": "libc.so.6", "c": "libc.so.6"}

POSITIONAL = {"rootfs": "vda", "overlay": "vdb", "config": "vdc"}


def load_pyudev():
    """pyudev, with its library lookup pointed at LIBRARIES (patched once)."""
    from pyudev._ctypeslib import utils
    if not getattr(utils.find_library, "kindling", False):
        original = utils.find_library

        def find_library(name):
            return LIBRARIES.get(name) or original(name)
        find_library.kindling = True
        utils.find_library = find_library
    import pyudev
    return pyudev


def read_serial(name, sysfs="/sys"):
    """The virtio-blk serial of /dev/<name>, or '' when it has none."""
    try:
        with open(f"{sysfs}/block/{name}/serial") as f:
            return f.read().strip()
    except OSError:
        return ""


def disks_present(sysfs="/sys"):
    """{name: serial} of the disks that exist: /sys/block lists them (not their partitions).
    Read directly, not enumerated through libudev: after a template's restore pyudev's
    enumeration was most of the `disks` stage."""
    return {name: read_serial(name, sysfs) for name in os.listdir(f"{sysfs}/block")}


def roles_found(disks, roles):
    """{role: '/dev/<name>'} when every role maps to one of `disks`, else None."""
    found = resolve_roles(disks, roles)
    if len(found) == len(roles):
        return {role: "/dev/" + name for role, name in found.items()}
    return None


def missing_roles(disks, roles):
    """The roles no disk of `disks` maps to, each with what it was looked for by."""
    found = resolve_roles(disks, roles)
    out = []
    for role in roles:
        if role not in found:
            pos = POSITIONAL.get(role)
            out.append(f"{role} (serial={role}" + (f" or /dev/{pos})" if pos else ")"))
    return out


def wait_for_roles(roles, timeout, watcher=None, sysfs="/sys"):
    """Block until every role maps to a disk: {role: '/dev/<name>'}; OSError naming the
    missing roles when `timeout` seconds pass first.  Disks that are there already cost a
    listing of /sys/block: the uevent monitor (pyudev's, libudev through ctypes: guest CPU
    beside PID 1's imports, and memory) is made only when one must be waited for.
    `watcher`: one made earlier (a template's, listening before its block driver binds)."""
    if watcher is None:
        found = roles_found(disks_present(sysfs), roles)
        if found is not None:
            return found
        watcher = BlockWatcher()
    found = watcher.wait_for_roles(roles, timeout)
    if found is None:
        raise OSError(f"disks not found within {timeout:.0f} s: "
                      + ", ".join(missing_roles(watcher.disks, roles)))
    return found


def resolve_roles(disks, roles):
    """Map each wanted role to a disk name.

    `disks` maps disk name -> serial ('' when none).  A role is found by serial
    first; else by its positional name when that disk carries no serial.
    Returns {role: name} for the roles found so far.
    """
    by_serial = {serial: name for name, serial in disks.items() if serial}
    found = {}
    for role in roles:
        if role in by_serial:
            found[role] = by_serial[role]
        else:
            pos = POSITIONAL.get(role)
            if pos in disks and not disks[pos]:
                found[role] = pos
    return found


class BlockWatcher:
    """Watches block-device uevents; start it before loading the block driver."""

    def __init__(self, subsystem="block"):
        pyudev = load_pyudev()
        self._context = pyudev.Context()
        self._monitor = pyudev.Monitor.from_netlink(self._context, source="kernel")
        self._monitor.filter_by(subsystem)
        self._monitor.start()
        self.disks = {}  # name -> serial

    def _add(self, name, sysfs="/sys"):
        if name not in self.disks:
            self.disks[name] = read_serial(name, sysfs)

    def coldplug(self, sysfs="/sys"):
        """The disks that exist already (disks_present)."""
        for name, serial in disks_present(sysfs).items():
            self.disks.setdefault(name, serial)

    def _drain(self):
        while True:
            device = self._monitor.poll(timeout=0)
            if device is None:
                return
            if device.action == "add" and device.device_type == "disk":
                self._add(device.sys_name)

    def _found(self, roles):
        return roles_found(self.disks, roles)

    def wait_for_roles(self, roles, timeout):
        """Block until every role maps to a disk; returns {role: '/dev/<name>'}.

        Sleeps in poll() on the uevent socket (woken by the kernel, not by a
        timer); returns None when `timeout` seconds pass first.
        """
        self.coldplug()
        deadline = time.monotonic() + timeout
        waiter = select.poll()
        waiter.register(self._monitor.fileno(), select.POLLIN)
        while (found := self._found(roles)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not waiter.poll(remaining * 1000):
                return None
            self._drain()
        return found

    async def wait_for_names(self, names):
        """Wait (trio) until every /dev/<name> in `names` exists as a disk.

        Callers bound it with trio.fail_after().
        """
        import trio

        self.coldplug()
        while not all(name in self.disks for name in names):
            await trio.lowlevel.wait_readable(self._monitor.fileno())
            self._drain()


async def wait_for_disks(names, timeout, sysfs="/sys"):
    """Wait (trio) until every /dev/<name> in `names` exists as a disk; returns the names
    still missing when `timeout` passes (empty: all there).  Disks that are there already
    cost a stat each: the uevent monitor (pyudev's, through ctypes: guest CPU on a clone's
    path after a template's restore) is made only when one must be waited for."""
    import trio

    if all(os.path.exists(f"{sysfs}/block/{name}") for name in names):
        return []
    watcher = BlockWatcher()
    with trio.move_on_after(timeout):
        await watcher.wait_for_names(names)     # re-checks /sys/block once it listens
    return [name for name in names if name not in watcher.disks]


def wait_for_link(ifname, timeout, sysfs="/sys"):
    """Block until /sys/class/net/<ifname> exists; False when `timeout` passes.  An
    interface that is there already costs one stat: the uevent monitor (pyudev's
    context loads libudev through ctypes, ~0.5 s of guest CPU right after a template's
    restore) is made only when it must be waited for."""
    if os.path.exists(f"{sysfs}/class/net/{ifname}"):
        return True
    return LinkWatcher().wait(ifname, timeout, sysfs)    # re-checks once it listens


class LinkWatcher:
    """Waits for a network interface, on kernel uevents of the `net` subsystem."""

    def __init__(self):
        pyudev = load_pyudev()
        self._monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
        self._monitor.filter_by("net")
        self._monitor.start()

    def wait(self, ifname, timeout, sysfs="/sys"):
        """Block until /sys/class/net/<ifname> exists; False when `timeout` passes."""
        deadline = time.monotonic() + timeout
        waiter = select.poll()
        waiter.register(self._monitor.fileno(), select.POLLIN)
        while not os.path.exists(f"{sysfs}/class/net/{ifname}"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not waiter.poll(remaining * 1000):
                return False
            while self._monitor.poll(timeout=0) is not None:
                pass
        return True


def fs_type(device):
    """Identify the filesystem on a block device from its superblock: erofs, ext4, or None."""
    with open(device, "rb") as f:
        f.seek(1024)
        sb = f.read(128)
    if len(sb) >= 4 and sb[0:4] == b"\xe2\xe1\xf5\xe0":  # EROFS_SUPER_MAGIC_V1, little endian
        return "erofs"
    if len(sb) >= 58 and sb[56:58] == b"\x53\xef":  # ext2/3/4 magic 0xEF53
        return "ext4"
    return None
