"""What `create` needs before QEMU starts: checked inputs, config.json, images, disks.

1. check the inputs (paths exist, sizes sane) and make config.json, validated as
   the guest will validate it, before anything slow happens;
2. get the kernel/initrd/rootfs into the instance from the image builder (which
   caches them);
3. make the instance's overlay and config disks, in the order of PROTOCOL.md §1.
"""

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

from initsys import protocol

from . import accel as accel_mod
from . import control, images, initmode, netns, qemu
from . import volumes as volumes_mod
from .errors import build_errors, die
from .instance import Instance, cache_dir
from .options import CreateOptions

AGENT_PORT_NAME = "org.kindling.agent.0"
QGA_PORT_NAME = "org.qemu.guest_agent.0"   # the name Debian's qemu-guest-agent looks for
GRPC_PORT_NAME = "org.kindling.grpc.0"      # the agent's gRPC front end (agent/front_ends.py)
VSOCK_FIRST_CID = 3


def serial_port_args(chardev: str, socket: Path, name: str) -> list[str]:
    """A virtserialport named `name` whose host end is a unix socket QEMU listens on."""
    return ["-chardev", f"socket,id={chardev},path={qemu.opt_value(socket)},server=on,wait=off",
            "-device", f"virtserialport,chardev={chardev},name={name}"]


def agent_args(instance: Instance, agent: str, machine: qemu.Machine,
               qga: bool = False, grpc: bool = False) -> tuple[list[str], str]:
    """QEMU devices for the agent's transport, and the kernel argument telling PID 1 which
    one to wait for (`kindling_agent=`, read by initsys/agent_gate.py).

    `qga` adds a second port on the same virtio-serial bus for QEMU's own guest agent
    (`org.qemu.guest_agent.0`, host end `qga.sock`).  Kindling does not start qemu-ga:
    udev does on a systemd-mode Debian guest; in exec mode whoever wants it starts it on
    the port's /dev/vportNpM (bench/agent_vs_qga.py does).

    `grpc` adds a port for the agent's gRPC front end (hypeman's GuestService,
    `org.kindling.grpc.0`, host end `grpc.sock`): where vsock is missing, a gRPC client
    reaches the agent there."""
    devices, karg = [], "kindling_agent=off"
    if agent == "serial" or qga or grpc:
        devices += ["-device", machine.serial_device]
    if agent == "serial":
        devices += serial_port_args("agent0", instance.agent_socket, AGENT_PORT_NAME)
        karg = "kindling_agent=serial"
    elif agent == "vsock":
        devices += ["-device", f"{machine.vsock_device},guest-cid={vsock_cid(instance.id)}"]
        karg = "kindling_agent=vsock"
    if qga:
        devices += serial_port_args("qga0", instance.qga_socket, QGA_PORT_NAME)
    if grpc:
        devices += serial_port_args("grpc0", instance.grpc_socket, GRPC_PORT_NAME)
    return devices, karg


def vsock_cid(instance_id: str) -> int:
    """The instance's vsock guest CID (unique per id on the host)."""
    return VSOCK_FIRST_CID + int(instance_id[:7], 16)


def check_image_alone(opts: CreateOptions) -> None:
    if opts.image is not None and (opts.base is not None or opts.rootfs is not None):
        die(f"--image {opts.image} and --{'base' if opts.base else 'rootfs'} cannot be used "
            "together: the image is the root filesystem")


def image_command_for(opts: CreateOptions) -> list[str] | None:
    """The image's own command (/sbin/init for --base debian, Entrypoint + Cmd of an
    --image), None when it has none."""
    from image_build.build import image_command
    if opts.image is not None:
        check_image_alone(opts)     # before pulling anything
        return images.image_command(opts)
    return image_command(opts.base or "busybox", opts.rootfs)


TIMELINE_ON_CONSOLE = "kindling_timeline=1"


def control_args(instance: Instance, opts: "CreateOptions", machine: qemu.Machine,
                 devices: list[str]) -> tuple[list[str], tuple[str, ...]]:
    """The control port (host_shim/control.py) and its kernel argument -- not for a
    given --initrd, which may not speak it: its markers then come from the console, and
    so do its boot stages, which PID 1 prints there only when asked (initsys/timeline.py)."""
    if opts.initrd is not None:      # a --kernel-arg kindling_timeline=... wins (as a hypeman host)
        given = any(a.startswith("kindling_timeline=") for a in opts.kernel_args)
        return [], () if given else (TIMELINE_ON_CONSOLE,)
    bus = [] if machine.serial_device in devices else ["-device", machine.serial_device]
    return bus + control.qemu_args(instance.logs_dir), (control.KERNEL_ARG,)


def program(opts: CreateOptions) -> tuple[tuple[str, ...], str]:
    """The command the VM runs -- the user's, else the image's own; for an --image or
    with --entrypoint, docker's rules (host_shim/images.py) -- and its init mode."""
    if opts.image is not None or opts.entrypoint is not None:
        return initmode.choose(images.command(opts), None, opts.init_mode)
    return initmode.choose(opts.command, image_command_for(opts), opts.init_mode)


def check_inputs(opts: CreateOptions) -> None:
    """What the table's converters cannot check alone: files exist, options that go (or
    do not go) together, a command to run.  (options.checked has checked each value.)"""
    for flag, path in (("--rootfs", opts.rootfs), ("--kernel", opts.kernel),
                       ("--modules", opts.modules), ("--config-json", opts.config_json),
                       ("--config-disk", opts.config_disk)):
        if path is not None and not os.path.exists(path):
            die(f"{flag}: {path} does not exist")
    if opts.initrd is not None:
        check_readable_file("--initrd", opts.initrd)
    if opts.modules is not None and not os.path.isdir(opts.modules):
        die(f"--modules: {opts.modules} is not a directory")
    if opts.modules is not None and opts.kernel is None:
        die("--modules needs --kernel", hint="pass the kernel the modules were built for")
    hooks = [flag for flag, value in (("--config-json", opts.config_json),
                                      ("--config-disk", opts.config_disk)) if value is not None]
    if len(hooks) > 1:
        die("--config-json and --config-disk cannot be used together")
    from image_build.build import check_base
    with build_errors():
        check_base(opts.base, opts.rootfs)
    check_image_alone(opts)
    if hooks and (opts.command or opts.env or opts.workdir or opts.init_mode != "auto"
                  or opts.entrypoint is not None or opts.user):
        die(f"{hooks[0]} replaces the generated config.json: give no command, --env, --workdir,"
            " --entrypoint, --user or --init-mode")
    if not hooks and not program(opts)[0]:
        die("no command given", hint=f"kindling {opts.verb} [OPTIONS] -- CMD [ARG...]  (or "
                                     f"kindling {opts.verb} --base debian, whose image boots its "
                                     "own /sbin/init)")


def make_config(opts: CreateOptions) -> dict:
    """config.json (PROTOCOL.md §2) for the command, validated as the guest will."""
    command, init_mode = program(opts)
    config = {
        "entrypoint": list(command[:1]),
        "cmd": list(command[1:]),
        "init_mode": init_mode,
        **images.program_defaults(opts),
        "skip_guest_agent": opts.agent == "none",
        "skip_kernel_headers": not opts.headers,   # and see settle_headers()
    }
    if opts.net:
        config.update(netns.Network(netns.namespace_for("-")).config_fields())
    if opts.volumes:
        config["volume_mounts"] = volumes_mod.layout(opts.volumes)[1]
    try:
        protocol.validate_config(config)
    except protocol.ConfigError as e:
        die(f"invalid run configuration: {e}")
    return config


def settle_headers(config: dict | bytes | None, artifacts, opts: CreateOptions) -> dict | bytes | None:
    """Once the images are built: a generated config skips the kernel headers when the
    built initrd carries none (a --kernel that is not Debian's).  With --initrd we cannot
    know, so only --no-headers skips them (the guest reports FAILED if it has none)."""
    if isinstance(config, dict) and opts.initrd is None and not artifacts.info.get("headers"):
        config = dict(config, skip_kernel_headers=True)
    return config


def check_readable_file(flag: str, path: Path) -> None:
    if not os.path.isfile(path):
        die(f"{flag}: {path} " + ("is not a regular file" if os.path.exists(path) else "does not exist"))
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        die(f"{flag}: cannot read {path}: {e.strerror}")


def config_for(opts: CreateOptions) -> dict | bytes | None:
    """The generated config, or the raw bytes of --config-json or of --config-disk's
    /config.json (the host reads its skip_guest_agent: `agent_skipped`); None for a
    config disk the host cannot read (the guest reports why)."""
    if opts.config_json is not None:
        try:
            return Path(opts.config_json).read_bytes()
        except OSError as e:
            die(f"--config-json: cannot read {opts.config_json}: {e.strerror}")
    if opts.config_disk is not None:
        from . import config_disk
        return config_disk.read(Path(opts.config_disk))
    return make_config(opts)


def agent_skipped(config: dict | bytes | None) -> bool:
    """Whether `Running` needs only PROGRAM-START.  A config we cannot read counts as
    skipped: the guest fails in its config stage and no agent ever reports ready."""
    if isinstance(config, bytes):
        try:
            config = json.loads(config)
        except ValueError:
            return True
    if isinstance(config, dict):
        return config.get("skip_guest_agent", False) is True
    return True


def build_artifacts(opts: CreateOptions, out_dir: Path):
    """Kernel, initrd and rootfs from the image builder (cached there), published to `out_dir`.

    `out_dir` is per instance: a shared one would let two concurrent creates with
    different inputs swap each other's images between build and boot.
    """
    from image_build.build import BuildOptions, build_all
    with build_errors("building the VM image failed"):
        rootfs_image = images.ensure(opts.image, insecure=opts.insecure_registries).rootfs if opts.image else None
        artifacts = build_all(BuildOptions(out_dir=out_dir, cache_dir=cache_dir(), rootfs=opts.rootfs,
                                           rootfs_image=rootfs_image,
                                           kernel=opts.kernel, modules=opts.modules,
                                           base=opts.base or "busybox", headers=opts.headers))
    if opts.initrd is None:
        return artifacts
    given = out_dir / "initrd-given.img"   # the instance keeps its own copy for `start`
    try:
        shutil.copyfile(opts.initrd, given)
    except OSError as e:
        die(f"--initrd: cannot copy {opts.initrd} into the instance: {e.strerror}")
    return dataclasses.replace(artifacts, initrd=given, info=dict(artifacts.info, headers=None))


def _make_raw_config_disk(data: bytes, path: Path) -> None:
    """A config disk holding exactly `data` as /config.json (the --config-json test hook)."""
    from image_build import cache as build_cache
    from image_build.disks import CONFIG_NAME
    from image_build.rootfs import make_ext4
    with tempfile.TemporaryDirectory(prefix="kindling-config-") as src:
        os.chmod(src, 0o755)
        Path(src, CONFIG_NAME).write_bytes(data)
        size = (len(data) * 2 + (1 << 20) + 4095) // 4096 * 4096
        key = build_cache.Hasher("config").add("data", data).hexdigest()
        make_ext4(Path(src), Path(path), size_bytes=size, key=key, label="kindling-cfg",
                  inodes=64)


def make_config_img(instance: Instance, config: dict | bytes) -> Path:
    """The instance's config disk: generated config.json, or the raw --config-json bytes."""
    from image_build import disks
    if isinstance(config, bytes):
        _make_raw_config_disk(config, instance.config_img)
    else:
        disks.make_config_disk(config, instance.config_img)
    return instance.config_img


def make_disks(instance: Instance, artifacts, config: dict | bytes | None,
               opts: CreateOptions) -> tuple[qemu.Disk, ...]:
    """rootfs, overlay, config: the order and serials of PROTOCOL.md §1."""
    from image_build import disks
    with build_errors("making the instance disks failed"):
        disks.make_overlay_disk(instance.overlay_img, opts.overlay_size)
        if opts.config_disk is not None:
            config_img = Path(opts.config_disk)
        else:
            config_img = make_config_img(instance, config)
    # The overlay persists across stop/start.  cache=unsafe (scratch) only ignores the
    # guest's flushes: QEMU's writes still reach the host page cache, so they survive
    # QEMU being killed (not a host crash, which an instance does not survive anyway).
    volume_disks = []
    if opts.volumes:
        with build_errors("making the volume overlay disks failed"):
            volume_disks = volumes_mod.materialize(volumes_mod.layout(opts.volumes)[0], instance.dir)
    return (
        qemu.Disk(os.fspath(artifacts.rootfs), "rootfs", readonly=True),
        qemu.Disk(os.fspath(instance.overlay_img), "overlay", scratch=True),
        qemu.Disk(os.fspath(Path(config_img).absolute()), "config", readonly=True),
        *(qemu.Disk(os.fspath(image), serial, readonly=ro) for image, serial, ro in volume_disks),
    )


def qemu_argv(instance: Instance, artifacts, disks: tuple[qemu.Disk, ...], accel: accel_mod.Accel,
              opts: CreateOptions, binary: str, devices: tuple[str, ...] = ()) -> list[str]:
    """`devices`: more (a template's resume port, host_shim/template.py), on the bus of the
    control port."""
    machine_name = qemu.DEFAULT_MACHINE  # the one machine every device below is placed on
    machine = qemu.machine_for(machine_name)
    network, net_args = None, ()
    if opts.net:  # QEMU runs inside the instance's namespace, where its tap is
        network = netns.Network(netns.namespace_for(instance.id))
        net_args = tuple(network.netdev_args(machine.net_device))
    agent_devices, agent_karg = agent_args(instance, opts.agent, machine, opts.qga, opts.grpc)
    control_devices, control_karg = control_args(instance, opts, machine, agent_devices)
    spec = qemu.VMSpec(
        machine=machine_name,
        kernel=os.fspath(artifacts.kernel),
        initrd=os.fspath(artifacts.initrd),
        disks=disks,
        console_log=os.fspath(instance.app_log),
        qmp_socket=os.fspath(instance.qmp_socket),
        accel=accel,
        memory_mib=opts.memory,
        cpus=opts.cpus,
        name=f"kindling-{instance.id}",
        # -S: the VMM is created with the guest stopped (state Created) until QMP `cont`;
        # -pidfile: QEMU holds a lock on it while it runs (host_shim/vmm.py).
        extra_args=("-pidfile", os.fspath(instance.pidfile), "-S", *net_args, *agent_devices,
                    *control_devices, *devices),
        # the kernel hands init the first of two equal keys: a test hook's value must win
        cmdline_extra=(("kindling_net=1",) if opts.net else ()) + tuple(a for a in (agent_karg,) if not any(
            k.startswith("kindling_agent=") for k in opts.kernel_args)) + control_karg + tuple(opts.kernel_args),
    )
    argv = qemu.build_argv(spec, binary)
    return network.exec_prefix() + argv if network else argv
