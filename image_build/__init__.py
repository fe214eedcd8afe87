"""Kindling's image builder: kernel, initrd and rootfs for a microVM.

Public API (see build.py and disks.py):

    from image_build.build import build_all, BuildOptions, Artifacts
    from image_build.disks import make_config_disk, make_overlay_disk, make_volume

CLI: `kindling build ...` (cli.add_arguments / cli.build_from_args), or
`python -m image_build build ...`.

What the initrd holds, for the PID 1 side:

    /init                               initsys/init from the repo (mode 0755)
    /usr/bin/python3.11                 Debian's interpreter; stdlib in /usr/lib/python3.11
    /usr/lib/kindling/                  trio, pyroute2, pyudev, msgpack, ..., initsys/, agent/
    /usr/lib/kindling/modules.list      kernel modules to load, in order (absolute paths)
    /usr/lib/kindling/modules.softdep   the subset present only as soft dependencies
                                        (e.g. crc32c-intel: ENODEV without SSE4.2 is fine)
    /usr/lib/kindling/build.json        kernel_release, modules, python_version, deps
    /usr/lib/x86_64-linux-gnu/libudev.so.1
    /dev/{console,null,urandom,random,tty}; empty /proc /sys /run /tmp /newroot /mnt /etc

Only the stdlib modules imported by initsys/manifest.py's GUEST_MODULES (and
by /init) are included: a module imported lazily at run time must be listed
there.
"""
