"""An instance's snapshot: the whole VM (RAM and device state) in one file, and the
record of what restoring it needs.  `kindling standby`/`restore` (host_shim/standby.py)
use it; `kindling fork` (host_shim/fork.py) gives a fork its own copy (`copy_to`).

Layout, in the instance directory:

    snapshot/vmstate        QEMU's migration stream: the guest's RAM and device state
    snapshot/record.json    what restoring needs (Record): the QEMU command line (its device
                            part is what the new QEMU must have), QEMU's version, the machine,
                            the stream's size, a fingerprint of every image the VM uses
    snapshot/restored.json  the record once the snapshot has been restored: the files are
                            kept (until the next standby, stop or delete) but no longer make
                            the instance `Standby`

Only record.json makes a snapshot (`exists`).  Saving is atomic in that order: the stream
goes to a temporary name, is fsynced and renamed to `vmstate`; the record is written last,
the same way.  A save that fails or dies half-way leaves at most a temporary file, which is
never taken for a snapshot and which the next save or `drop` removes.

Transport, without a shell: QEMU 7.2 has no `file:` migration URI and `exec:cat > F` is a
shell string.  Kindling opens the file itself and hands QEMU the descriptor on the QMP
socket (`getfd`, SCM_RIGHTS), then `migrate fd:NAME`.  Restoring launches QEMU with
`-incoming defer` (rather than `-incoming fd:N` with an inherited descriptor) so that the
new QEMU's version can be checked against the record over QMP before any of the stream is
read, and so that no descriptor has to survive `ip netns exec` in between; then `getfd` and
`migrate-incoming fd:NAME`.  QEMU does not write zero pages out (it sends a flag per page):
the file is about the size of the memory the guest has touched, not of its RAM.

Fingerprints, not digests: an image's (size, mtime_ns, inode) -- the rootfs, overlay and
volume images are hundreds of MB to GBs, and hashing them at every standby and restore
would cost more than the restore itself.  Any write through the filesystem (QEMU, mkfs, a
host tool, another instance using the volume) changes mtime_ns; a writer that sets the
mtime back on purpose is not detected.  They are taken once the migration has completed
(QEMU has flushed and stopped writing the disks).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import trio

from . import qmp
from .prepare import vsock_cid
from .qemu import opt_value
from .errors import KindlingError, die, disk_full_errors
from .instance import Instance
from .netns import namespace_for

FORMAT = 1
FD_NAME = "kindling-snapshot"
POLL = 0.05                   # s between query-migrate polls
MAX_BANDWIDTH = 1 << 40       # bytes/s: QEMU 7.2 limits migration to 32 MiB/s by default
FINISHED = ("completed", "failed", "cancelled")


class SnapshotError(KindlingError):
    """A snapshot could not be saved, read, or does not fit the instance any more."""


@dataclass(frozen=True)
class Paths:
    dir: Path

    @property
    def vmstate(self) -> Path:
        return self.dir / "vmstate"

    @property
    def record(self) -> Path:
        return self.dir / "record.json"

    @property
    def restored(self) -> Path:
        return self.dir / "restored.json"

    @property
    def partial(self) -> Path:
        return self.dir / ".vmstate.partial"


def paths(instance: Instance) -> Paths:
    return Paths(instance.dir / "snapshot")


def exists(instance: Instance) -> bool:
    """Whether the instance has a complete snapshot it has not been restored from."""
    return paths(instance).record.exists()


def drop(instance: Instance) -> None:
    """Remove the snapshot, complete or partial (the record first: never half a snapshot)."""
    p = paths(instance)
    p.record.unlink(missing_ok=True)
    shutil.rmtree(p.dir, ignore_errors=True)


@dataclass(frozen=True)
class Record:
    argv: list[str]               # the QEMU command line the snapshot was taken with
    machine: str                  # its -machine value
    qemu_version: str             # QMP query-version of the QEMU that saved it
    vmstate_size: int             # bytes of snapshot/vmstate
    images: dict[str, dict]       # image path -> fingerprint()
    saved_at: int                 # host ns
    format: int = FORMAT


def option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def images_of(argv: list[str]) -> list[str]:
    """The files QEMU reads the VM from: -kernel, -initrd and every -drive file=."""
    found = option(argv, "-kernel") + option(argv, "-initrd")
    for drive in option(argv, "-drive"):
        for part in drive.replace(",,", "\0").split(","):
            if part.startswith("file="):
                found.append(part[5:].replace("\0", ","))
    return found


def fingerprint(path: str) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def version_text(reply: dict) -> str:
    q = reply.get("qemu", {}) if isinstance(reply, dict) else {}
    return f"{q.get('major')}.{q.get('minor')}.{q.get('micro')} {reply.get('package', '')}".strip()


# --- saving -------------------------------------------------------------------

async def set_capabilities(client: qmp.QMPClient, capabilities: tuple[str, ...]) -> None:
    """Migration capabilities on (a template's `x-ignore-shared`: host_shim/template.py)."""
    if capabilities:
        await client.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": name, "state": True} for name in capabilities]})


async def _migrate_out(client: qmp.QMPClient, fd: int, capabilities: tuple[str, ...] = ()) -> None:
    await set_capabilities(client, capabilities)
    await client.execute("migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH})
    await client.send_fd(FD_NAME, fd)
    await client.execute("migrate", {"uri": f"fd:{FD_NAME}"})
    await _until_finished(client, "saving the snapshot")


async def _until_finished(client: qmp.QMPClient, doing: str) -> None:
    while True:
        info = await client.execute("query-migrate") or {}
        status = info.get("status")
        if status == "completed":
            return
        if status in FINISHED:
            raise SnapshotError(f"{doing} failed: QEMU says {info.get('error-desc', status)}")
        await trio.sleep(POLL)


async def save(instance: Instance, argv: list[str], capabilities: tuple[str, ...] = ()) -> Record:
    """Write the paused VM's state to snapshot/ (QEMU keeps running, paused), then the
    record (`capabilities`: migration capabilities to turn on first).  Raises SnapshotError (or QMPError when QEMU went away) and leaves nothing
    that counts as a snapshot when it fails.  Timeout: at the call site."""
    drop(instance)
    p = paths(instance)
    try:
        with disk_full_errors(p.dir):
            p.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(p.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                async with await qmp.QMPClient.connect(instance.qmp_socket) as client:
                    version = version_text(await client.execute("query-version"))
                    await _migrate_out(client, fd, capabilities)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(p.partial, p.vmstate)
            record = Record(argv=list(argv), machine=(option(argv, "-machine") or [""])[0],
                            qemu_version=version, vmstate_size=p.vmstate.stat().st_size,
                            images={i: fingerprint(i) for i in images_of(argv)},
                            saved_at=time.time_ns())
            _write_atomically(p.record, json.dumps(asdict(record), indent=1) + "\n")
    except BaseException:
        drop(instance)
        raise
    return record


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


# --- restoring ----------------------------------------------------------------

def load_record(instance: Instance) -> Record:
    p = paths(instance)
    try:
        obj = json.loads(p.record.read_text())
        record = Record(**obj)
    except FileNotFoundError:
        die(f"instance {instance.id} has no snapshot ({p.record} does not exist)")
    except (ValueError, TypeError) as e:
        raise SnapshotError(f"corrupt snapshot record {p.record}: {e}",
                            hint="stop the instance to drop the snapshot") from None
    if record.format != FORMAT:
        raise SnapshotError(f"snapshot record {p.record} has format {record.format}, "
                            f"expected {FORMAT}")
    return record


def verify(instance: Instance) -> Record:
    """The record, once the snapshot file and every image are checked to be as saved."""
    record = load_record(instance)
    vmstate = paths(instance).vmstate
    hint = f"`kindling stop {instance.id}` drops the snapshot (the VM's memory is lost)"
    try:
        size = vmstate.stat().st_size
    except FileNotFoundError:
        raise SnapshotError(f"the snapshot file {vmstate} is missing", hint=hint) from None
    if size != record.vmstate_size:
        raise SnapshotError(f"the snapshot file {vmstate} is {size} bytes, its record says "
                            f"{record.vmstate_size}: it was truncated or changed", hint=hint)
    for image, saved in record.images.items():
        try:
            now = fingerprint(image)
        except FileNotFoundError:
            raise SnapshotError(f"image {image} of the snapshot is missing", hint=hint) from None
        if now != saved:
            raise SnapshotError(f"image {image} changed while the instance was in standby "
                                f"(size, mtime or inode differ from the snapshot's record); "
                                f"restoring would corrupt it", hint=hint)
    return record


async def load(instance: Instance, record: Record, vmstate: Path | None = None,
               capabilities: tuple[str, ...] = ()) -> None:
    """Feed the snapshot (the instance's, or `vmstate`: a template's, only read) to the
    QEMU just launched with `-incoming defer`; returns once the incoming migration has
    completed (the VM is then paused: QEMU runs with -S).  Timeout: at the call site."""
    with open(vmstate or paths(instance).vmstate, "rb") as f:
        async with await qmp.QMPClient.connect(instance.qmp_socket) as client:
            version = version_text(await client.execute("query-version"))
            if version != record.qemu_version:
                raise SnapshotError(f"the snapshot was saved by QEMU {record.qemu_version}, "
                                    f"this is QEMU {version}: its state cannot be loaded")
            await set_capabilities(client, capabilities)
            await client.send_fd(FD_NAME, f.fileno())
            await client.execute("migrate-incoming", {"uri": f"fd:{FD_NAME}"})
            await _until_finished(client, "loading the snapshot")


def mark_restored(instance: Instance) -> None:
    """The snapshot has become a running VM: keep its files, but no longer `Standby`."""
    p = paths(instance)
    os.replace(p.record, p.restored)


def incoming_argv(argv: list[str]) -> list[str]:
    """The saved command line for the restoring QEMU: `-incoming defer`, and the control
    channel's file appended to instead of truncated (this boot's lines stay)."""
    out = [a + ",append=on" if a.startswith("file,") and "append=" not in a else a for a in argv]
    return out + ["-incoming", "defer"]


# --- forking ------------------------------------------------------------------

def rewrite_argv(argv: list[str], old: Instance, new: Instance) -> list[str]:
    """`old`'s QEMU command line made `new`'s: its instance directory (sockets, logs,
    pidfile, disks, images), its network namespace and -name, its vsock guest CID.  Paths
    outside the instance directory (the rootfs of --config-disk, ro volumes) stay."""
    out = []
    for arg in argv:
        arg = arg.replace(opt_value(old.dir), opt_value(new.dir))
        if arg == namespace_for(old.id):          # `ip netns exec NS` and `-name`
            arg = namespace_for(new.id)
        arg = arg.replace(f"guest-cid={vsock_cid(old.id)}", f"guest-cid={vsock_cid(new.id)}")
        out.append(arg)
    return out


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:             # another filesystem, or no hard links there
        shutil.copyfile(src, dst)


def copy_to(source: Instance, fork: Instance) -> Record:
    """Give `fork` its own snapshot of `source`'s (verified first): the vmstate hard-linked
    (QEMU never writes it after the save, and a restore only reads it), the record with
    its command line rewritten to the fork's directory and disks, and the fingerprints of
    the fork's own images.  Call once the fork's disks are in place."""
    record = verify(source)
    p = paths(fork)
    p.dir.mkdir(parents=True, exist_ok=True)
    link_or_copy(paths(source).vmstate, p.vmstate)
    argv = rewrite_argv(record.argv, source, fork)
    forked = Record(argv=argv, machine=record.machine, qemu_version=record.qemu_version,
                    vmstate_size=record.vmstate_size,
                    images={i: fingerprint(i) for i in images_of(argv)},
                    saved_at=record.saved_at)
    _write_atomically(p.record, json.dumps(asdict(forked), indent=1) + "\n")
    return forked
