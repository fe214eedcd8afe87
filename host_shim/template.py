"""`kindling template create|list|rm`: a guest snapshotted at its boot's checkpoint, the
warm start of `kindling create --template NAME` (issue 12; clones: host_shim/clone.py).

What a template is.  A guest booted with `kindling_checkpoint=1` does, once, the work
that is the same on every boot -- module closure, `import trio`, the agent's imports
and fork, the network helper's start -- and stops before it reads anything of an
instance (initsys/checkpoint.py: the block driver is not even loaded).  On its
`KINDLING-CHECKPOINT` marker (read from the control log, PID 1's channel) the host
stops the VM, saves it with host_shim/snapshot.py (the one definition of a snapshot)
and ends QEMU.  What is kept, in $KINDLING_HOME/templates/NAME/:

    template.json       the record (Template): the options the VM was made with, its
                        volume slots, the digests of kernel, initrd and rootfs, QEMU's
                        version and machine, the build time -- written LAST: a directory
                        without it is a half-made template, never used, removed by the
                        next create of that name
    snapshot/           vmstate + record.json (snapshot.py); clones only read vmstate
    images/             kernel, initrd, rootfs (hard links into the image cache)
    logs/               the template boot's console and control logs

The device set.  A clone's QEMU must have the template's devices exactly (a migration
stream restores device state, not devices).  Both are built by the same code:
prepare.qemu_argv with the same options, the same number of disks -- rootfs, overlay,
config and `--volume-slots N` -- and the resume port (`org.kindling.resume.0`, a socket
QEMU listens on).  The template's overlay, config and slot disks are placeholders that
the guest never reads (no block driver before the checkpoint); a clone puts its own
images there, and fills the slots it does not use with placeholders.

Staleness.  A template is tied to its kernel, initrd and rootfs by SHA-256 digest (a
clone asks the image builder for the same images -- cached, ~0.1 s -- and compares: a
changed initsys, for one, means a changed initrd, and the template's PID 1 would be old
code), to QEMU's version (checked over QMP before the stream is read, snapshot.load) and
to its machine and devices (the clone's command line is built from the template's
options).  The digest of a file hard-linked to the same inode as the template's copy is
not recomputed.  A stale template is refused naming what changed; `template create NAME
--rebuild` makes it again.

Shared memory (the default; `--private-memory` opts out).  The template's guest RAM
is a memory-backend-file `ram` (share=on) and the snapshot is saved with the migration
capability `x-ignore-shared`, so vmstate holds only device state (~70 KB instead of
~140 MiB); a clone maps the file with share=off (MAP_PRIVATE) and loads with the same
capability: the pages it only reads stay the page cache's, shared by every clone, and
the ones it writes are its own copies.  `bench/template_memory.py --guests 8`: PSS per
clone 0.41x a cold guest's (0.83x for a private-memory template's clones); and the
restore reads no RAM (`bench/create_running.py`: 0.26 s against 0.41 s).  Each clone
maps its own hard link of the file (`ram` in its instance directory, `clone_ram`): the
same inode, so the same page cache, and the clone keeps working -- `kindling stop` +
`start`, standby, restore -- after `template rm` or `--rebuild` (which unlink the
template's name for the file, never rewrite it).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trio

from image_build.cache import file_sha256

from . import accel as accel_mod
from . import control, netns, options, prepare, qemu, qmp, snapshot, vmm
from .errors import KindlingError, die, disk_full_errors
from .instance import Instance, check_name, home_lock, kindling_home

FORMAT = 1
RECORD = "template.json"
CHECKPOINT_ARG = "kindling_checkpoint=1"
RESUME_PORT = "org.kindling.resume.0"     # initsys/checkpoint.py RESUME_PORT
RESUME_SOCKET = "resume.sock"
RAM_FILE = "ram"
IGNORE_SHARED = ("x-ignore-shared",)      # the snapshot leaves the shared RAM to its file
RAM_ID = "ram0"
IMAGES = ("kernel", "initrd", "rootfs")
# The options a clone takes from its template (they are in its memory or its devices).
FIXED = ("rootfs", "image", "base", "kernel", "modules", "headers", "memory", "cpus", "accel",
         "agent", "qga", "net", "kernel_args")
# The options a template is not made with: a template has no program, config or volumes.
NOT_FOR_TEMPLATES = ("name", "template", "command", "env", "workdir", "entrypoint", "user", "volumes", "initrd",
                     "config_json", "config_disk", "first_launch_kernel_args")
CHECKPOINT_TIMEOUT = 300.0    # s from `cont` to the marker (a loaded TCG host: ~10 s alone)
SAVE_TIMEOUT = 300.0
POLL = 0.05                   # s between reads of the control log
PLACEHOLDER_SIZE = 4096


def templates_dir(home: Path) -> Path:
    return Path(home) / "templates"


@dataclass(frozen=True)
class Template:
    name: str
    id: str                       # the template VM's (its network namespace while it boots)
    options: dict                 # options.to_json of what it was made with
    volume_slots: int
    digests: dict[str, dict]      # kernel|initrd|rootfs -> {sha256, size, dev, inode}
    qemu_version: str
    machine: str
    vmstate_size: int
    build_seconds: float          # template create, from the request to the record
    checkpoint_seconds: float     # of which: QEMU's start to the checkpoint marker
    created_at: int
    format: int = FORMAT
    shared_memory: bool = False   # RAM in `ram`, mapped privately by each clone (below);
                                  # False in records made before it was the default
    dir: Path = field(default=Path(), compare=False)

    @property
    def instance(self) -> Instance:
        return Instance(self.id, self.dir)

    @property
    def vmstate(self) -> Path:
        return snapshot.paths(self.instance).vmstate

    @property
    def ram(self) -> Path:
        return self.dir / RAM_FILE

    def to_json(self) -> dict:
        out = asdict(self)
        out["dir"] = os.fspath(self.dir)
        return out


# --- digests -------------------------------------------------------------------

def digest(path: Path) -> dict:
    st = os.stat(path)
    return {"sha256": file_sha256(path), "size": st.st_size, "dev": st.st_dev, "inode": st.st_ino}


def same_file(path: Path, recorded: dict) -> bool:
    """Whether `path` has the recorded content (the same inode: without reading it)."""
    st = os.stat(path)
    if (st.st_dev, st.st_ino, st.st_size) == (recorded["dev"], recorded["inode"], recorded["size"]):
        return True
    return st.st_size == recorded["size"] and digest(path)["sha256"] == recorded["sha256"]


def changed_images(template: Template, artifacts) -> list[str]:
    """The images (kernel, initrd, rootfs) that the same options build differently now."""
    return [name for name in IMAGES
            if not same_file(getattr(artifacts, name), template.digests[name])]


# --- the record ------------------------------------------------------------------

def _corrupt(name: str, why: str) -> KindlingError:
    return KindlingError(f"template {name} is corrupt: {why}",
                         hint=f"`kindling template create {name} --rebuild ...` makes it again")


def load(home: Path, name: str) -> Template:
    """The template `name`, its snapshot checked (present, the size it was saved with)."""
    tdir = templates_dir(home) / check_name(name)
    try:
        obj = json.loads((tdir / RECORD).read_text())
        template = Template(**{**obj, "dir": tdir})
    except FileNotFoundError:
        die(f"no template named {name!r}", hint="`kindling template list` shows them; "
            f"`kindling template create {name}` makes one")
    except (ValueError, TypeError) as e:
        raise _corrupt(name, f"{tdir / RECORD}: {e}") from None
    if template.format != FORMAT:
        raise _corrupt(name, f"{tdir / RECORD} has format {template.format}, expected {FORMAT}")
    try:
        size = template.vmstate.stat().st_size
    except FileNotFoundError:
        raise _corrupt(name, f"its snapshot {template.vmstate} is missing") from None
    if size != template.vmstate_size:
        raise _corrupt(name, f"its snapshot {template.vmstate} is {size} bytes, its record "
                             f"says {template.vmstate_size}")
    return template


def list_all(home: Path) -> list[Template]:
    found = []
    for entry in sorted(templates_dir(home).glob(f"*/{RECORD}")):
        try:
            found.append(load(home, entry.parent.name))
        except KindlingError:
            continue          # `template rm` still removes it
    return found


def remove(home: Path, name: str) -> None:
    tdir = templates_dir(home) / check_name(name)
    if not tdir.is_dir():
        die(f"no template named {name!r}", hint="`kindling template list` shows them")
    with home_lock(home):
        (tdir / RECORD).unlink(missing_ok=True)     # never half a template
        shutil.rmtree(tdir, ignore_errors=True)


# --- the device set (shared with clones) -------------------------------------------

def placeholder(path: Path, serial: str) -> qemu.Disk:
    """A disk the guest never reads (or a clone's unused volume slot)."""
    with open(path, "wb") as f:
        f.truncate(PLACEHOLDER_SIZE)
    return qemu.Disk(os.fspath(path), serial, readonly=True)


def slot_disks(instance: Instance, first: int, slots: int) -> tuple[qemu.Disk, ...]:
    return tuple(placeholder(instance.dir / f"slot-{n}.img", f"unused-{n}")
                 for n in range(first, slots))


def resume_args(instance: Instance) -> tuple[str, ...]:
    return tuple(prepare.serial_port_args("resume0", instance.dir / RESUME_SOCKET, RESUME_PORT))


def machine_argv(instance: Instance, artifacts, disks, opts: options.CreateOptions,
                 tmpl: "Template | None" = None) -> list[str]:
    """The QEMU command line of a template or a clone: the same devices for the same
    options and number of disks; each its own backends.  A clone of a template with
    shared memory maps the template's RAM file privately (copy on write)."""
    argv = prepare.qemu_argv(instance, artifacts, disks, accel_mod.resolve(opts.accel), opts,
                             qemu.find_qemu(), devices=resume_args(instance))
    if tmpl is not None and tmpl.shared_memory:
        argv = with_memory_file(argv, clone_ram(instance, tmpl), share=False)
    return argv


def clone_ram(instance: Instance, tmpl: "Template") -> Path:
    """The clone's own name for the template's RAM file: a hard link in its instance
    directory (a copy where the two are on different filesystems)."""
    mine = instance.dir / RAM_FILE
    if not mine.exists():
        snapshot.link_or_copy(tmpl.ram, mine)
    return mine


def with_memory_file(argv: list[str], path: Path, *, share: bool) -> list[str]:
    """`argv` with its guest RAM in a file: shared (the template writes its RAM there, so
    the snapshot need not hold it: x-ignore-shared) or private (a clone: the file's pages
    are read in on demand and shared between clones in the page cache until written)."""
    at = argv.index("-machine") + 1
    size = argv[argv.index("-m") + 1]
    backend = (f"memory-backend-file,id={RAM_ID},size={size}M,mem-path={qemu.opt_value(path)},"
               f"share={'on' if share else 'off'}")
    return [*argv[:at], f"{argv[at]},memory-backend={RAM_ID}", "-object", backend, *argv[at + 1:]]


# --- template create ---------------------------------------------------------------------

def check_options(opts: options.CreateOptions, slots: int) -> None:
    defaults = options.CreateOptions()
    for name in NOT_FOR_TEMPLATES:
        if getattr(opts, name) != getattr(defaults, name):
            die(f"{options.BY_NAME[name].flag}: a template has no program, config or volumes "
                "(give them to `kindling create --template NAME`)",
                hint="--volume-slots N makes room for N volumes in each clone")
    if opts.agent == "vsock":
        die("--agent vsock: a template's clones need the agent on virtio-serial (a vhost-vsock "
            "device's guest CID is fixed in the snapshot)", hint="--agent serial (the default) or none")
    if not 0 <= slots <= 16:
        die(f"--volume-slots {slots}: expected 0 to 16")


async def create(name: str, opts: options.CreateOptions, home: Path | None = None, *,
                 volume_slots: int = 0, rebuild: bool = False,
                 shared_memory: bool = True) -> Template:
    """Make template `name`; nothing of it is left when this fails.  `shared_memory`: its
    RAM in a file that clones map privately (with_memory_file)."""
    requested = time.monotonic()
    home = Path(home or kindling_home())
    check_name(name)
    opts = options.checked(opts, home)
    check_options(opts, volume_slots)
    tdir = templates_dir(home) / name
    with home_lock(home):
        if (tdir / RECORD).exists() and not rebuild:
            die(f"template {name} exists", hint=f"`kindling template create {name} --rebuild` "
                "makes it again; `kindling template rm` removes it")
        (tdir / RECORD).unlink(missing_ok=True)
        shutil.rmtree(tdir, ignore_errors=True)       # --rebuild, or a half-made one
        instance = Instance(secrets.token_hex(6), tdir)
        instance.logs_dir.mkdir(parents=True)
        instance.app_log.touch()
    try:
        with disk_full_errors(home):
            return await _make(instance, name, opts, volume_slots, requested, shared_memory)
    except BaseException:
        with trio.CancelScope(shield=True):
            await vmm.stop(instance, graceful=0)
        instance.remove()
        raise
    finally:
        netns.destroy_if_present(instance.id)


async def _make(instance: Instance, name: str, opts: options.CreateOptions, slots: int,
                requested: float, shared_memory: bool = True) -> Template:
    if opts.net:
        netns.create(instance.id)
    artifacts = prepare.build_artifacts(opts, instance.images_dir)
    disks = (qemu.Disk(os.fspath(artifacts.rootfs), "rootfs", readonly=True),
             placeholder(instance.overlay_img, "overlay"),
             placeholder(instance.config_img, "config"),
             *slot_disks(instance, 0, slots))
    argv = machine_argv(instance, artifacts, disks, opts)
    if shared_memory:
        argv = with_memory_file(argv, instance.dir / RAM_FILE, share=True)
    record, checkpoint_seconds = await checkpoint_and_save(
        instance, qemu.with_kernel_args(argv, (CHECKPOINT_ARG,)),
        IGNORE_SHARED if shared_memory else ())
    template = Template(name=name, id=instance.id, options=options.to_json(opts),
                        volume_slots=slots,
                        digests={n: digest(getattr(artifacts, n)) for n in IMAGES},
                        qemu_version=record.qemu_version, machine=record.machine,
                        vmstate_size=record.vmstate_size,
                        build_seconds=round(time.monotonic() - requested, 3),
                        checkpoint_seconds=round(checkpoint_seconds, 3),
                        created_at=record.saved_at, shared_memory=shared_memory, dir=instance.dir)
    obj = template.to_json()
    del obj["dir"]
    snapshot._write_atomically(instance.dir / RECORD, json.dumps(obj, indent=1) + "\n")
    return template


async def checkpoint_and_save(instance: Instance, argv: list[str],
                              capabilities: tuple[str, ...] = ()) -> tuple[snapshot.Record, float]:
    """Boot `argv` to its checkpoint, save it, end QEMU; the snapshot's Record and the
    seconds from QEMU's start to the checkpoint marker."""
    launched = time.monotonic()
    await vmm.launch(instance, argv)
    with connected(instance):      # before `cont`: an unconnected port reads as EOF
        await vmm.cont(instance)
        await wait_for_checkpoint(instance)
        checkpoint_seconds = time.monotonic() - launched
        with trio.fail_after(vmm.QMP_TIMEOUT):
            await qmp.execute(instance.qmp_socket, "stop")
        try:
            with trio.fail_after(SAVE_TIMEOUT):
                record = await snapshot.save(instance, argv, capabilities)
        except trio.TooSlowError:
            die(f"saving the template's snapshot took over {SAVE_TIMEOUT:g} s")
    await vmm.stop(instance, graceful=0)
    return record, checkpoint_seconds


def connected(instance: Instance) -> socket.socket:
    """The host end of the resume port, connected (QEMU listens on it)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(os.fspath(instance.dir / RESUME_SOCKET))
    except OSError as e:
        sock.close()
        die(f"cannot connect to the resume port's socket {instance.dir / RESUME_SOCKET}: "
            f"{e.strerror}")
    return sock


async def wait_for_checkpoint(instance: Instance) -> None:
    """Until PID 1's KINDLING-CHECKPOINT is in the control log (the program cannot write
    there; none runs yet anyway); a FATAL, QEMU's end or the timeout is an error."""
    from initsys import protocol

    path = control.log_path(instance.logs_dir)
    with trio.move_on_after(CHECKPOINT_TIMEOUT):
        while True:
            kinds = {m.kind: m for m in control.trusted_markers(control.read_lines(path))}
            if protocol.CHECKPOINT in kinds:
                return
            if fatal := kinds.get(protocol.FATAL):
                die(f"the template's guest failed in stage {fatal.fields.get('stage', '?')}: "
                    f"{fatal.fields.get('error', '')}", hint=f"see {instance.app_log}")
            if vmm.pid_of(instance) is None:
                said = vmm.tail(instance.vmm_log)
                die("the template's QEMU ended before the checkpoint",
                    hint=("QEMU said:\n" + said) if said else f"see {instance.app_log}")
            await trio.sleep(POLL)
    die(f"the template's guest did not reach its checkpoint within {CHECKPOINT_TIMEOUT:g} s",
        hint=f"see {instance.app_log}")
