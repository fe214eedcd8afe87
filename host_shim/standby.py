"""pause, resume, standby, restore: the operations on a VM's run state and its snapshot.

The transitions of PROTOCOL.md §6 they make, and nothing else (any other is refused
naming the instance's state):

    pause    Running -> Paused                       QMP stop
    resume   Paused -> Running                       QMP cont
    standby  Running -> Paused -> Standby            stop, save (host_shim/snapshot.py),
             (or Paused -> Standby)                  end QEMU: the host gets the memory back
    restore  Standby -> Paused -> Running            a new QEMU with the same command line,
                                                     -incoming, load, cont, guest_sync

Each runs under the instance's meta.lock from its first look to its last, and records
every state through lifecycle's one observation path (`observe_locked`), so no other
shim can see the instance half-way (say QEMU gone before the record is written, which
would read as Stopped).  Failures leave a whole state: a save that fails resumes the VM
(Running) and keeps no snapshot; a QEMU killed during the save leaves the instance
Stopped; a restore that fails ends its QEMU and leaves the instance Standby with the
snapshot untouched.

A restore continues the boot the snapshot was taken in (same boot number, markers and
log): a restored guest prints no new boot markers, and the early-boot watchdog is off
for it (`Metadata.restored_at`).
"""

from __future__ import annotations

import trio

from . import guest_sync, lifecycle, log, metadata, netns, qmp, snapshot, vmm
from .errors import Conflict, KindlingError, die
from .instance import Instance
from .metadata import Metadata
from .state import State

SAVE_TIMEOUT = 300.0      # a 4 GiB guest at ~100 MB/s, on a loaded host
LOAD_TIMEOUT = 300.0
STANDBY_BY = "kindling standby"


def refuse(meta: Metadata, operation: str, needs: str, hint: str | None = None) -> None:
    raise Conflict(f"cannot {operation} instance {meta.name}: it is {meta.state} ({operation} "
                   f"needs {needs})", hint=hint or meta.error or f"see `kindling inspect {meta.name}`")


async def _qmp(instance: Instance, command: str) -> None:
    try:
        with trio.fail_after(vmm.QMP_TIMEOUT):
            await qmp.execute(instance.qmp_socket, command)
    except trio.TooSlowError:
        die(f"QEMU did not answer QMP {command} within {vmm.QMP_TIMEOUT:g} s")


async def _flip(instance: Instance, operation: str, needs: State, command: str) -> Metadata:
    """`operation` (pause or resume) of an instance in state `needs`: QMP `command`."""
    async with metadata.update(instance) as meta:
        await lifecycle.observe_locked(instance, meta)
        if meta.state is not needs:
            refuse(meta, operation, needs.value)
        await _qmp(instance, command)
        await lifecycle.observe_locked(instance, meta)
    return meta


async def pause(instance: Instance) -> Metadata:
    """Running -> Paused: the guest's vCPUs stop; memory and devices stay as they are."""
    return await _flip(instance, "pause", State.RUNNING, "stop")


async def resume(instance: Instance) -> Metadata:
    """Paused -> Running."""
    return await _flip(instance, "resume", State.PAUSED, "cont")


# --- standby ------------------------------------------------------------------

async def standby(instance: Instance) -> Metadata:
    """Running (or Paused) -> Paused -> Standby: the VM's state saved to the instance's
    snapshot, then QEMU ended.  On a failed save the VM is resumed if it was Running."""
    async with metadata.update(instance) as meta:
        await lifecycle.observe_locked(instance, meta)
        if meta.state not in (State.RUNNING, State.PAUSED):
            refuse(meta, "standby", "Running or Paused")
        was_running = meta.state is State.RUNNING
        if was_running:
            await _qmp(instance, "stop")
            await lifecycle.observe_locked(instance, meta)
        try:
            with trio.fail_after(SAVE_TIMEOUT):
                await snapshot.save(instance, meta.argv)
        except (KindlingError, OSError, trio.TooSlowError) as e:
            await _after_failed_save(instance, meta, was_running, e)
        how = await vmm.stop(instance, graceful=0)
        await lifecycle.observe_locked(instance, meta)
        meta.vmm_exit = f"{how or 'ended'} by {STANDBY_BY} (the VM's state is in its snapshot)"
    return meta


def _why(e: BaseException, timeout: float) -> str:
    if isinstance(e, trio.TooSlowError):
        return f"it did not complete within {timeout:g} s"
    if isinstance(e, KindlingError):
        return e.message
    return f"{e.strerror or e}" + (f" ({e.filename})" if getattr(e, "filename", None) else "")


async def _after_failed_save(instance: Instance, meta: Metadata, was_running: bool,
                             e: BaseException) -> None:
    """A save failed (snapshot.save has removed what it wrote): resume the VM if QEMU is
    still there, and raise the error saying what state the instance is left in."""
    snapshot.drop(instance)
    if vmm.pid_of(instance) is None:
        await lifecycle.observe_locked(instance, meta)
        metadata.save(instance, meta)
        raise KindlingError(f"standby of instance {meta.name} failed: QEMU ended during the "
                            f"save ({meta.vmm_exit or 'it exited'}); no snapshot was kept, "
                            f"the instance is {meta.state}",
                            hint=f"`kindling start {meta.name}` boots it again") from None
    if was_running:
        await _qmp(instance, "cont")
    await lifecycle.observe_locked(instance, meta)
    metadata.save(instance, meta)
    raise KindlingError(f"standby of instance {meta.name} failed: {_why(e, SAVE_TIMEOUT)}; no snapshot was "
                        f"kept, the instance is {meta.state}",
                        hint=getattr(e, "hint", None)) from None


# --- restore ------------------------------------------------------------------

async def restore(instance: Instance) -> Metadata:
    """Standby -> Paused -> Running: a new QEMU with the snapshot's command line loads the
    snapshot; then the guest's clock and RNG are refreshed (guest_sync).  A failure before
    the guest runs ends that QEMU and leaves the instance Standby, its snapshot untouched."""
    async with metadata.update(instance) as meta:
        await lifecycle.observe_locked(instance, meta)
        if meta.state is not State.STANDBY:
            refuse(meta, "restore", "Standby", hint=None if meta.state is not State.STOPPED
                   else f"instance {meta.name} has no snapshot: `kindling start` boots it")
        record = snapshot.verify(instance)
        if meta.options.get("net"):
            netns.ensure(instance.id)
        await _launch_incoming(instance, meta, record)
        await lifecycle.observe_locked(instance, meta, scan=False)     # Paused
        await vmm.cont(instance)
        snapshot.mark_restored(instance)
        await lifecycle.observe_locked(instance, meta, scan=False)     # Running
    if meta.agent_skipped or not instance.agent_socket.exists():   # --agent none or vsock
        log.note(f"instance {meta.name} has no agent on virtio-serial: its wall clock and RNG "
                 "were not refreshed after the restore (the guest's clock is the snapshot's time)")
    else:
        await guest_sync.after_restore(instance)
    return await lifecycle.observe(instance)


async def _launch_incoming(instance: Instance, meta: Metadata, record: snapshot.Record) -> None:
    """QEMU with -incoming defer, fed the snapshot; ended again if that fails."""
    instance.qmp_socket.unlink(missing_ok=True)
    pid = await vmm.launch(instance, snapshot.incoming_argv(record.argv))
    try:
        with trio.fail_after(LOAD_TIMEOUT):
            await snapshot.load(instance, record)
    except BaseException as e:
        with trio.CancelScope(shield=True):
            await vmm.stop(instance, graceful=0)
        if not isinstance(e, (KindlingError, OSError, trio.TooSlowError)):
            raise
        said = vmm.tail(instance.vmm_log, 5)
        raise KindlingError(f"restore of instance {meta.name} failed: {_why(e, LOAD_TIMEOUT)}; the instance "
                            f"is still Standby with its snapshot",
                            hint=("QEMU said:\n" + said) if said else None) from None
    meta.pid = pid
    meta.logs_final = False
    meta.vmm_exit = None
    meta.restored_at = lifecycle.now_ns()
