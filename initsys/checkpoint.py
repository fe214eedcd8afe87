"""The checkpoint of a template's boot: where PID 1 waits to be snapshotted, and how a
clone of it continues (kernel argument `kindling_checkpoint=1`, issue 12).

A template (host_shim/template.py) is a guest stopped after the work that is the same
on every boot -- the API mounts, the module closure, `import trio` and the agent's
imports, the agent forked, the network helper prestarted, the control port open --
and before anything instance-specific.  The line between the two is the probe of the
disks: the checkpoint's boot loads the whole module closure, `virtio_blk` last with the
virtio bus's driver autoprobe off (`/sys/bus/virtio/drivers_autoprobe`), so the driver's
code is in the kernel but bound to no device.  The template's guest has never probed a
disk, never read a config.json, an overlay or a volume, and no page of any disk is in
its page cache.  A clone restored from the template binds the driver to its block
devices after the resume (`bind_disks`, in virtio index order: the names vda, vdb...
are a cold boot's) and so sees its own disks -- their serials, sizes and contents --
exactly as a cold boot does.  The module's load is off the clone's path; the probe stays
on it (~0.75 s for five disks under TCG, most of it the first disk: the kernel's probe
path translated anew after the restore; README, session 7).

The handshake, on a dedicated virtio-serial port `org.kindling.resume.0` whose host
end is a unix socket QEMU listens on (`resume.sock` in the instance directory):

1. PID 1 opens the port, prints `KINDLING-CHECKPOINT ts=...` (control port first, then
   the console, docs/protocol.md) and blocks reading the port.
2. The template's host, on the marker: QMP stop, save the snapshot, quit QEMU.
3. A clone's host, after QMP `cont`, writes ONE line: `<host CLOCK_REALTIME ns>
   <64 bytes of entropy in hex> <the clone's config.json, base64>\\n`.  PID 1 sets the
   clock, adds the entropy with credit and forces the CRNG to reseed -- agent/sync.py's
   code, the one definition, also used by the agent after a restore -- then answers
   `ok\\n`, takes the config (the same bytes as the clone's config disk holds: the
   host makes both with image_build/disks.config_bytes), launches the network helper
   with it and only then binds the block driver to the disks; the boot goes on from
   `disks` as a cold one, with the network configured while the disks are probed.

Why the config travels on the line: the network helper's netlink work is the longest
stage of a clone (~0.8 s of guest time, with TCG's translation cache empty after the
restore).  Read from the config disk, it could start only after the block driver, the
disks and the root; given at the resume, it overlaps them (bench/create_running.py's
`template` variant).  A clone never mounts its config disk; the disk is still made and
attached, and a cold boot of the same instance (`kindling stop` + `start`) reads it.

The host keeps its end connected from before `cont` to the answer: a read of a
virtio-serial port whose host end is not connected returns EOF at once (the kernel's
virtio_console), which here is an error, not a reason to spin.

What is NOT fresh in a clone: state made before the checkpoint and copied with the
memory -- Python's hash seed and `random` module state of PID 1, the agent and the
network helper (none of them uses `random` for anything secret: `secrets` and
os.urandom read the reseeded kernel CRNG), and the guest's MAC address (virtio-net's
MAC is the same default for every Kindling guest, cold or cloned: each one is alone in
its own network namespace, host_shim/netns.py).
"""

import binascii
import os

RESUME_PORT = "org.kindling.resume.0"
BLOCK_DRIVER = "virtio_blk"
PORT_TIMEOUT = 10.0
MAX_LINE = 4 << 20      # a config.json of up to ~3 MiB, base64'd
ANSWER = b"ok\n"


def requested(environ=os.environ):
    return environ.get("kindling_checkpoint") == "1"


VIRTIO_BUS = "/sys/bus/virtio"
VIRTIO_ID_BLOCK = 2     # a virtio device's `device` file (include/uapi/linux/virtio_ids.h)


def is_block_driver(path):
    """Whether a module file of the closure is the block driver (virtio_blk.ko[.xz...])."""
    return os.path.basename(path).split(".", 1)[0] == BLOCK_DRIVER


# What PID 1 imports after the resume (a clone's path from `config` to the program),
# imported before the checkpoint instead: after a restore each import costs guest CPU on the
# clone's critical path; before it, once per template.  The list is what a clone imported
# after its resume before this (sys.modules at the program's start against the checkpoint's);
# bench/create_running.py's `template` stage breakdown shows the `config` stage it shortens.
AFTER_RESUME = ("initsys.config", "initsys.headers_launch", "initsys.network", "initsys.program",
                "initsys.rootfs", "initsys.stages", "initsys.volumes")


def import_after_resume():
    import importlib

    for name in AFTER_RESUME:
        importlib.import_module(name)


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def load_modules_unbound(bus=VIRTIO_BUS):
    """The checkpoint's `modules`: the closure, the block driver last and bound to no
    device (the bus's autoprobe off while it registers, on again after).  Returns the
    block devices left unbound, for `bind_disks`: a clone's QEMU has its template's
    devices, so the list is made once here and not by every clone (listing sysfs cost
    ~0.1-0.2 s of a clone's guest time after the restore)."""
    from initsys import kmod

    kmod.load_all(only=lambda path: not is_block_driver(path))
    _write(f"{bus}/drivers_autoprobe", "0")
    try:
        kmod.load_all(only=is_block_driver)
    finally:
        _write(f"{bus}/drivers_autoprobe", "1")
    return block_devices(bus)


def block_devices(bus=VIRTIO_BUS):
    """The virtio block devices not bound to a driver, in index order (virtio0, virtio1...)."""
    found = []
    for name in os.listdir(f"{bus}/devices"):
        device = f"{bus}/devices/{name}"
        with open(f"{device}/device") as f:
            if int(f.read(), 16) != VIRTIO_ID_BLOCK or os.path.exists(f"{device}/driver"):
                continue
        found.append(name)
    return sorted(found, key=lambda name: int(name.removeprefix("virtio")))


def bind_disks(names, bus=VIRTIO_BUS):
    """A clone, after the resume: the block driver probes its disks `names` (what
    `load_modules_unbound` returned) one at a time, in that order: the names vda,
    vdb... are a cold boot's."""
    for name in names:
        _write(f"{bus}/drivers/{BLOCK_DRIVER}/bind", name)


def parse(line):
    """(time_ns, entropy, config.json bytes) of the host's resume line, the time and
    entropy checked by agent/sync.py's rules (the config is checked when parsed)."""
    from agent import sync

    parts = line.split()
    if len(parts) != 3 or not parts[0].isdigit():
        raise ValueError(f"resume line {line[:80]!r}: expected "
                         "`<time_ns> <entropy hex> <config.json base64>`")
    try:
        entropy = bytes.fromhex(parts[1])
    except ValueError:
        raise ValueError(f"resume line: the entropy {parts[1][:40]!r} is not hex") from None
    try:
        config = binascii.a2b_base64(parts[2], strict_mode=True)
    except binascii.Error as e:
        raise ValueError(f"resume line: the config.json is not base64 ({e})") from None
    try:
        return (*sync.parse({"time_ns": int(parts[0]), "entropy": entropy}), config)
    except Exception as e:      # agent.execs.RequestError / agent.wire.ProtocolError
        raise ValueError(f"resume line: {e}") from None


def read_line(fd):
    """One line from the port (blocking); EOF before it is an error."""
    chunks, size = [], 0
    while not chunks or not chunks[-1].endswith(b"\n"):
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            raise OSError(f"virtio-serial port {RESUME_PORT}: the host closed it before "
                          "resuming the guest")
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_LINE:
            raise OSError(f"virtio-serial port {RESUME_PORT}: a line over {MAX_LINE} bytes")
    return b"".join(chunks).decode("ascii", "replace")


def open_port():
    from initsys import ports

    path = ports.wait_for_port(RESUME_PORT, PORT_TIMEOUT)
    if path is None:
        raise OSError(f"virtio-serial port {RESUME_PORT} did not appear within "
                      f"{PORT_TIMEOUT:.0f} s (kindling_checkpoint=1)")
    return os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)


def wait_and_resume():
    """Print the marker, block until a clone's host resumes the guest, then refresh the
    clock and the RNG from the host's line before anything else runs.  Returns the
    clone's config.json (bytes, not yet parsed)."""
    from agent import sync
    from initsys import console, protocol

    fd = open_port()
    try:
        console.emit(protocol.checkpoint_line())
        time_ns, entropy, config = parse(read_line(fd))
        sync.apply(time_ns, sync.rand_pool_info(entropy))
        os.write(fd, ANSWER)
    finally:
        os.close(fd)
    return config
