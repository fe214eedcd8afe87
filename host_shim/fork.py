"""`kindling fork SOURCE --name NEW`: a new instance from a Stopped or Standby one
(hypeman's semantics, issue 12).

The fork gets its own id, name, logs, network namespace (with --net: by its id, so the
same guest address in its own namespace), its own copy of the writable disks (the root
overlay and the per-instance disks of overlay volumes), its config disk rebuilt, and the
read-only images (kernel, initrd, rootfs) hard-linked.  From a Standby source it also
gets its own snapshot (snapshot.copy_to): the vmstate hard-linked, the record rewritten
to the fork's directory and disks, so restoring the fork runs from the source's memory
with the fork's own disks.  The fork's state is the source's at fork time unless
--target-state says otherwise; from a Running source only with --from-running (source
-> standby, fork, source -> restored).

Disks are copied with `cp --reflink=auto --sparse=always`: on a filesystem with reflinks
(btrfs, XFS) a copy shares the source's blocks and costs nothing up front; on ext4 (this
project's machine) it reads and writes the blocks the source has allocated -- for a
fresh 256 MiB overlay a few MiB -- and leaves the holes holes.  The copy runs under the
home's names lock (the name is claimed only once metadata.json is saved), so other
creates and forks wait for it.

A rw volume of the source refuses the fork (two VMs must not write one ext4 image);
ro and overlay volumes are fine (the overlay's writes are on the fork's own copy).  A
fork that fails removes the new instance: nothing half-made is left.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import trio

from . import lifecycle, metadata, netns, prepare, snapshot, standby, template
from .errors import Conflict, die
from .instance import Instance, check_name, kindling_home
from .metadata import Metadata
from .run import run
from .state import State

COPY_TIMEOUT = 600.0          # s per disk: a 10 GiB full overlay on a slow disk
TARGETS = (State.RUNNING, State.STANDBY, State.STOPPED)


def target_state(text: str | State | None) -> State | None:
    """--target-state as a State (None: the source's state at fork time)."""
    if text is None or isinstance(text, State) and text in TARGETS:
        return text
    for state in TARGETS:
        if str(text).lower() == state.value.lower():
            return state
    die(f"--target-state {text!r}: expected one of {', '.join(s.value for s in TARGETS)}")


async def fork(source_ref: str, name: str, *, home: Path | None = None,
               from_running: bool = False, target: str | State | None = None
               ) -> tuple[Instance, Metadata]:
    """Fork instance `source_ref` into a new instance `name`; returns it in `target`
    state (default: the source's state at fork time)."""
    home = Path(home or kindling_home())
    check_name(name)
    target = target_state(target)
    source, _ = metadata.resolve(home, source_ref)
    meta = await lifecycle.observe(source)
    if meta.state is State.RUNNING and from_running:
        await standby.standby(source)
        try:
            return await _fork(home, source, name, target or State.RUNNING)
        finally:
            with trio.CancelScope(shield=True):
                await standby.restore(source)
    return await _fork(home, source, name, target)


def refusal(meta: Metadata, target: State | None) -> str | None:
    """Why instance `meta` cannot be forked (to `target`), or None."""
    if meta.state is State.RUNNING:
        return (f"cannot fork instance {meta.name}: it is Running (fork needs Stopped or "
                f"Standby; --from-running puts it in standby for the fork and restores it)")
    if meta.state not in (State.STOPPED, State.STANDBY):
        return (f"cannot fork instance {meta.name}: it is {meta.state} (fork needs Stopped "
                f"or Standby, or Running with --from-running)")
    if not meta.argv:
        return f"cannot fork instance {meta.name}: its create was interrupted (it has no disks)"
    if target is State.STANDBY and meta.state is State.STOPPED:
        return (f"cannot fork instance {meta.name} to Standby: it is Stopped, so there is "
                f"no memory to fork (fork a Standby or Running instance)")
    rw = [v["image"] for v in meta.options.get("volumes") or () if v.get("mode") == "rw"]
    if rw:
        return (f"cannot fork instance {meta.name}: it attaches the rw volume"
                f"{'s' if len(rw) > 1 else ''} {', '.join(rw)}, and two VMs must not write "
                f"one ext4 image (attach it :overlay or :ro to fork the instance)")
    return None


async def _fork(home: Path, source: Instance, name: str,
                target: State | None) -> tuple[Instance, Metadata]:
    async with metadata.update(source) as meta:
        await lifecycle.observe_locked(source, meta)
        if why := refusal(meta, target):
            raise Conflict(why)
        fork = lifecycle.claim(home, name, lambda new: _make(source, meta, new, name))
    try:
        return fork, await _to_target(fork, target or meta.state)
    except BaseException:
        with trio.CancelScope(shield=True):
            await lifecycle.delete(fork)
        raise


async def _to_target(fork: Instance, target: State) -> Metadata:
    meta = await lifecycle.observe(fork)
    if target is meta.state:
        return meta
    if target is State.STOPPED:                 # a Standby fork's snapshot dropped
        return await lifecycle.stop(fork)
    if meta.state is State.STANDBY:
        return await standby.restore(fork)
    return await lifecycle.start(fork)


def _make(source: Instance, smeta: Metadata, fork: Instance, name: str) -> Metadata:
    """The fork's disks, snapshot and namespace, and its first metadata (run by
    lifecycle.claim before the metadata is saved: until then the fork is not listed)."""
    copy_disks(source, smeta, fork)
    if smeta.state is State.STANDBY:
        snapshot.copy_to(source, fork)
    if smeta.options.get("net"):
        netns.create(fork.id)
    return fork_metadata(smeta, source, fork, name)


def copy_disks(source: Instance, smeta: Metadata, fork: Instance) -> None:
    """The writable disks copied (reflink/sparse), the images hard-linked, the config
    disk rebuilt (or copied: a raw --config-json test hook is kept as given)."""
    shutil.copytree(source.images_dir, fork.images_dir, copy_function=snapshot.link_or_copy)
    if (source.dir / template.RAM_FILE).exists():     # a clone's link of its template's RAM
        snapshot.link_or_copy(source.dir / template.RAM_FILE, fork.dir / template.RAM_FILE)
    slots = sorted(source.dir.glob("slot-*.img"))     # a template clone's unused volume slots
    for disk in [source.overlay_img, *sorted(source.dir.glob("volume-overlay-*.img")), *slots]:
        run(["cp", "--reflink=auto", "--sparse=always", os.fspath(disk),
             os.fspath(fork.dir / disk.name)], timeout=COPY_TIMEOUT)
    if smeta.options.get("config_disk") is not None:
        return                                  # a given disk, used where it is
    if isinstance(smeta.config, dict):
        prepare.make_config_img(fork, smeta.config)
    else:
        run(["cp", "--sparse=always", os.fspath(source.config_img),
             os.fspath(fork.config_img)], timeout=COPY_TIMEOUT)


def fork_metadata(smeta: Metadata, source: Instance, fork: Instance, name: str) -> Metadata:
    """The source's metadata made the fork's.  A Standby fork continues the source's boot
    (its markers, so it is Running once restored); a Stopped one starts from no boot."""
    meta = Metadata.from_json(smeta.to_json())
    meta.id, meta.name, meta.created_at = fork.id, name, time.time_ns()
    meta.argv = snapshot.rewrite_argv(smeta.argv, source, fork)
    meta.options = dict(smeta.options, name=name)
    meta.pid, meta.history, meta.relaunches, meta.error = None, [], [], None
    meta.restored_at = None
    if smeta.state is not State.STANDBY:
        blank = Metadata(id=fork.id, name=name, created_at=meta.created_at, command=[],
                         config=None, agent_skipped=False, argv=[], accel="", log_max_bytes=0,
                         log_keep=0)
        for field in ("boot", "boot_requested_at", "log_since", "markers", "events",
                      "time_to_running", "vmm_exit", "logs_final"):
            setattr(meta, field, getattr(blank, field))
    meta.record_state(smeta.state, at_ns=meta.created_at)
    return meta
