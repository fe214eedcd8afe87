"""virtio-serial port names -> /dev/virtio-ports/<name> (there is no udev to do it).

The port's name arrives from the host in a control message after the port
exists; the kernel then sends a `change` uevent.  We wait for the name on
uevents of the virtio-ports subsystem, after a coldplug scan -- no polling.
"""

import os
import select
import time

SYSFS_PORTS = "/sys/class/virtio-ports"
DEV_PORTS = "/dev/virtio-ports"


def named_ports(sysfs=SYSFS_PORTS):
    """{name: 'vportNpM'} for every port whose name the host has sent."""
    ports = {}
    try:
        entries = os.listdir(sysfs)
    except FileNotFoundError:
        return ports
    for port in entries:
        try:
            with open(f"{sysfs}/{port}/name") as f:
                name = f.read().strip()
        except OSError:
            continue
        if name:
            ports[name] = port
    return ports


def link_ports(ports, dev=DEV_PORTS):
    os.makedirs(dev, exist_ok=True)
    for name, port in ports.items():
        link = f"{dev}/{name}"
        if not os.path.islink(link):
            os.symlink(f"../{port}", link)


def wait_for_port(name, timeout, sysfs=SYSFS_PORTS, dev=DEV_PORTS):
    """Create the /dev/virtio-ports links once `name` exists; its path, or None on timeout.
    A port already named costs a listing: the uevent monitor (pyudev's, libudev through
    ctypes: guest CPU beside PID 1's imports, and memory) is made only to wait for one."""
    ports = named_ports(sysfs)
    if name not in ports:
        ports = _wait_named(name, timeout, sysfs)
        if ports is None:
            return None
    link_ports(ports, dev)
    return f"{dev}/{name}"


def _wait_named(name, timeout, sysfs):
    """named_ports() once it holds `name`, on uevents (re-read once listening); None on timeout."""
    from initsys.devices import load_pyudev

    pyudev = load_pyudev()
    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
    monitor.filter_by("virtio-ports")
    monitor.start()
    waiter = select.poll()
    waiter.register(monitor.fileno(), select.POLLIN)
    deadline = time.monotonic() + timeout
    while name not in (ports := named_ports(sysfs)):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not waiter.poll(remaining * 1000):
            return None
        while monitor.poll(timeout=0) is not None:
            pass
    return ports
