"""The network stage: eth0, lo, default route and resolver, over netlink (pyroute2).

It runs in a helper process of PID 1, not in PID 1 itself.  Importing pyroute2
costs ~0.6 s of guest CPU under TCG (ENVIRONMENT.md); in its own process it
runs on the second vCPU while PID 1 mounts the volumes, so the stage costs
wall time only when it is the longest one.  PID 1 passes the settings as a
JSON argument (initsys/helpers.py); the helper exits 0, or 1 with one line on
stderr saying what failed.  The helper touches only the kernel (netlink, the
hostname), never a file: PID 1 writes the resolver files into the root once the
helper is done (`write_resolver_files`), so a clone can launch the helper at its
resume, before its root exists (initsys/checkpoint.py).

pyroute2's package __init__ imports everything (ndb, ipdb, sqlite3...).  We
need only `pyroute2.iproute.linux`, so the parent package is registered as a
bare namespace (its submodules load normally) -- half the import time.
"""

import json
import os
import socket
import sys

LINK_TIMEOUT = 10.0
EXIT_AT_ONCE = True     # no interpreter teardown after main (initsys/helpers.py)


def import_iproute():
    import importlib.machinery
    import types

    if "pyroute2" not in sys.modules:
        spec = importlib.machinery.PathFinder.find_spec("pyroute2")
        if spec is None:
            raise ImportError("pyroute2 is not installed")
        parent = types.ModuleType("pyroute2")
        parent.__path__ = list(spec.submodule_search_locations)
        parent.__spec__ = spec
        sys.modules["pyroute2"] = parent
    from pyroute2.iproute.linux import IPRoute
    return IPRoute


def _write_file(path, text):
    """Write a regular file, replacing a symlink (its target would resolve outside the root)."""
    if os.path.islink(path):
        os.unlink(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def write_resolver_files(settings, root):
    etc = os.path.join(root, "etc")
    if settings.get("guest_dns"):
        _write_file(os.path.join(etc, "resolv.conf"), f"nameserver {settings['guest_dns']}\n")
    hostname = settings.get("hostname")
    if hostname:
        _write_file(os.path.join(etc, "hostname"), hostname + "\n")
    hosts = settings.get("hosts") or {}
    if hostname or hosts:
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        if hostname:
            lines.append(f"127.0.1.1\t{hostname}")
        lines += [f"{addr}\t{name}" for name, addr in sorted(hosts.items())]
        _write_file(os.path.join(etc, "hosts"), "\n".join(lines) + "\n")


def open_with_lo_up():
    """A netlink socket (pyroute2's IPRoute) with lo brought up: the part of the stage that
    is the same on every boot.  A prestarted helper does it before its settings come, so
    on a template's boot it is done before the checkpoint (pyroute2's first request costs
    ~0.2 s of guest CPU after a restore, TCG's cache empty) and on a cold boot while PID 1
    is still importing."""
    ipr = import_iproute()()
    ipr.link("set", index=socket.if_nametoindex("lo"), state="up")
    return ipr


def configure(settings, ifname="eth0", ipr=None):
    """Bring up lo (unless `ipr` came from open_with_lo_up) and `ifname` with the
    protocol's settings, set the hostname."""
    from initsys.devices import wait_for_link

    if not wait_for_link(ifname, LINK_TIMEOUT):
        raise OSError(f"network interface {ifname} did not appear within {LINK_TIMEOUT:.0f} s")
    with ipr or open_with_lo_up() as ipr:
        try:
            index = socket.if_nametoindex(ifname)   # an ioctl: pyroute2's lookup parses a link dump
        except OSError:
            raise OSError(f"network interface {ifname} is gone") from None
        ipr.addr("add", index=index, address=settings["guest_ip"], prefixlen=settings["guest_cidr"])
        link = {"state": "up"}
        if settings.get("mtu"):
            link["mtu"] = settings["mtu"]
        ipr.link("set", index=index, **link)
        if settings.get("guest_gw"):
            ipr.route("add", dst="0.0.0.0/0", gateway=settings["guest_gw"])
    if settings.get("hostname"):
        socket.sethostname(settings["hostname"])


def settings_of(cfg):
    return {"guest_ip": cfg.guest_ip, "guest_cidr": cfg.guest_cidr, "guest_gw": cfg.guest_gw,
            "guest_dns": cfg.guest_dns, "hostname": cfg.hostname, "mtu": cfg.mtu, "hosts": cfg.hosts}


def main(argv):
    """Helper entry: SETTINGS_JSON [IFNAME], or `--go-fd N [IFNAME]` (deferred: import
    first, then read the SETTINGS_JSON from fd N; nothing there = not wanted)."""
    try:
        ipr = None
        if argv[0] == "--go-fd":
            import initsys.devices  # noqa: F401  (pyudev, for the link wait)
            from initsys.helpers import read_all
            ipr = open_with_lo_up()
            go = read_all(int(argv[1]))
            if not go:
                ipr.close()
                return 0
            settings, rest = json.loads(go), argv[2:]
        else:
            settings, rest = json.loads(argv[0]), argv[1:]
        configure(settings, rest[0] if rest else "eth0", ipr)
        from initsys.helpers import report_done
        report_done()      # PID 1 goes on; this process's exit is reaped later
    except Exception as e:  # reported to PID 1 in one line
        from initsys.failure import describe
        sys.stderr.write(f"{describe(e)}\n")
        return 1
    return 0
