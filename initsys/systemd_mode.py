"""systemd mode: hand the prepared root over to the image's own init.

Exec mode keeps PID 1 in the initramfs and runs the program chrooted.  In
systemd mode the image's init must itself become PID 1, in the new root.  So,
once the ordered setup and the network/volume stages are done:

1. the initramfs root is bind-mounted read-only at /run/kindling/initrd of the
   new root (its /run is a tmpfs systemd keeps), so that the agent and the
   headers worker -- which run on the initrd's Python -- still exist after the
   switch (the initramfs is not freed: ~30 MiB of RAM, the price of an image
   that needs no Python of its own);
2. the units of systemd_units/ are installed and enabled, with the agent's
   environment file (the config's env plus its transport arguments);
3. /dev, /proc and /sys are moved into the new root, the new root is moved
   onto / and chrooted into (what switch_root does, minus deleting the
   initramfs), HYPEMAN-PROGRAM-START mode=systemd is printed, and PID 1
   execs the init argv (config.json's entrypoint + cmd).

The agent PID 1 prestarted (before the config was known) is killed: systemd
starts its own copy from the unit.  Readiness is then the agent's
HYPEMAN-AGENT-READY line (the unit's output goes to the journal and the
console), not the FD handshake, which only exists in exec mode.

The control port (initsys/control.py) is PID 1's until the exec of systemd
(its descriptor is close-on-exec); the agent unit then opens it (`--control`)
and writes AGENT-READY there.  HEADERS-* of the headers unit go to the console
only (the agent holds the port).
"""

import os
import signal

from initsys import console, control, libc, mounts, ports, protocol

INITRD_BIND = "/run/kindling/initrd"        # inside the new root
MOVED_MOUNTS = ("dev", "proc", "sys")


def agent_args(transport):
    """The agent's command-line transport arguments for the unit ($KINDLING_AGENT_ARGS)."""
    if transport["transport"] == "serial":
        args = ["--transport", "serial", "--path", transport["path"]]
    else:
        args = ["--transport", transport["transport"], "--port", str(transport["port"])]
    if control.descriptor() is not None:  # PID 1's copy closes at the exec of systemd
        args += ["--control", f"{ports.DEV_PORTS}/{control.NAME}"]
    return args


def headers_tarball(cfg, newroot):
    """The headers tarball for the unit, or None.  When headers are wanted but none
    matches the running kernel, report it the worker's way (FAILED) and install no unit."""
    from initsys import headers, headers_launch

    if not headers_launch.wanted(cfg):
        return None
    headers.write_atomic(os.path.join(newroot, headers.STATUS_FILE), "pending\n")
    try:
        return headers.find_tarball(os.uname().release)
    except headers.Failed as e:
        headers.write_atomic(os.path.join(newroot, headers.STATUS_FILE), "failed\n")
        console.emit(protocol.headers_failed_line(str(e)))
        return None


class Switch:
    """What main() does once trio has returned: switch root and exec init."""

    def __init__(self, argv, newroot=mounts.NEWROOT):
        self.argv = argv
        self.newroot = newroot

    def exec(self):
        """Never returns; raises OSError when the switch or the exec fails."""
        for sub in MOVED_MOUNTS:
            target = os.path.join(self.newroot, sub)
            libc.umount(target, libc.MNT_DETACH)  # the recursive binds exec mode uses
            libc.mount("/" + sub, target, None, libc.MS_MOVE)
        os.chdir(self.newroot)
        libc.mount(self.newroot, "/", None, libc.MS_MOVE)
        os.chroot(".")
        os.chdir("/")
        init = self.argv[0]
        if not os.path.isfile(init) or not os.access(init, os.X_OK):
            raise OSError(f"init_mode systemd: {init} is not an executable file in the image "
                          "(config.json entrypoint)")
        for signum in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)  # ignored dispositions survive exec
        console.emit(protocol.program_start_line("systemd"))
        os.execve(init, self.argv, {"PATH": protocol.DEFAULT_PATH, "TERM": os.environ.get("TERM", "linux")})


def prepare(cfg, transport, newroot=mounts.NEWROOT):
    """Bind the runtime, install the units; returns the Switch for main()."""
    import systemd_units

    target = os.path.join(newroot, INITRD_BIND.lstrip("/"))
    os.makedirs(target, mode=0o755, exist_ok=True)
    libc.mount("/", target, None, libc.MS_BIND)
    libc.mount(None, target, None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY)

    tarball = headers_tarball(cfg, newroot)
    if tarball is not None:
        tarball = INITRD_BIND + tarball
    args = None
    env = None
    if not cfg.skip_guest_agent:
        args = agent_args(transport)
        env = dict(cfg.program_env(), KINDLING_READY_FILE="/run/kindling/agent.ready")
    systemd_units.install(newroot, agent_args=args, agent_env=env, headers_tarball=tarball,
                          runtime=INITRD_BIND)
    return Switch(cfg.argv, newroot)
