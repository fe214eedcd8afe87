"""The instance operations: create, start, stop, delete, list, inspect, wait, logs, analyze.

All of them are async (trio) and work on the instance directory alone, so any
number of shim processes (a `kindling wait` here, a `kindling list` there, a
library user) can look at one instance; none of them has to stay alive for the
VM to keep running.  host_shim/api.py wraps them for synchronous callers, and
cli.py is a thin layer over that.

Every look at an instance goes through `observe`: under the instance's
meta.lock it probes the VMM, rotates the serial log if it is too big, scans for
markers if one is due, derives the state (state.derive_state) and records the
transition (state.transition_path enforces the transitions table), then saves
metadata.json.  Recording happens in the order observations were made, because
the probe is made under the same lock.
"""

import math
import time
from functools import partial
from collections.abc import Callable
from pathlib import Path

import trio

from initsys import protocol

from . import accel as accel_mod
from . import console, control, locks, logfiles, markers, metadata, netns, options, prepare, qemu, vmm
from . import clone, log, snapshot, template, watchdog
from . import run as run_mod
from . import timeline as tl
from .errors import EXIT_KINDLING, Conflict, KindlingError, NoSuchInstance, die, disk_full_errors
from .follow import POLL_INTERVAL, ConsoleFollower, Progress
from .instance import LOCK_TIMEOUT, Instance, check_name, home_lock, kindling_home
from .markers import MarkerRecord
from .metadata import Metadata
from .state import (ForbiddenTransition, Observation, State, Vmm, derive_state,
                    transition_path)

DEFAULT_STOP_TIMEOUT = 10.0   # like `docker stop`
# `wait --for running` and `run` give a boot this long to reach Running (overridable).
# A Debian systemd guest takes ~20 s under TCG on a quiet host, but more than 120 s on
# this project's shared 2-core machine at load 10 (measured: tests/test_vm_systemd.py);
# a hung boot (issue 15) never gets there.
DEFAULT_BOOT_TIMEOUT = options.DEFAULT_BOOT_TIMEOUT
OBSERVE_EVERY = 1.0           # how often a follower re-probes the VMM (and checks rotation)


def now_ns() -> int:
    return time.time_ns()


# --- recording observations ---------------------------------------------------

_MARKER_EVENTS = ((protocol.PROGRAM_START, tl.PROGRAM_START_SEEN),
                  (protocol.AGENT_READY, tl.AGENT_READY_SEEN),
                  (protocol.EXIT, tl.EXIT_SEEN),
                  (protocol.FATAL, tl.FATAL_SEEN))


def _note_marker_events(meta: Metadata) -> None:
    for kind, event in _MARKER_EVENTS:
        seen = meta.markers.get(kind)
        if seen is not None:
            meta.mark(event, seen.seen_at)


def running_seen_at(meta: Metadata) -> int | None:
    """When the host had seen every marker Running needs (host ns), if it has."""
    needed = [protocol.PROGRAM_START] + ([] if meta.agent_skipped else [protocol.AGENT_READY])
    seen = [meta.markers.get(kind) for kind in needed]
    if any(s is None for s in seen):
        return None
    return max(s.seen_at for s in seen)


def apply_observation(meta: Metadata, observed: State, *, error: str | None = None,
                      now: int | None = None, inferred: bool = False) -> None:
    """Record `observed` as the instance's state, enforcing the transitions table.

    An observation the table forbids (say Initializing -> Paused, someone paused
    QEMU behind our back) is not recorded as that state: the instance becomes
    Unknown, with the forbidden transition as its error, until an observation
    fits again.
    """
    now = now_ns() if now is None else now
    if observed is State.UNKNOWN:
        if meta.state is not State.UNKNOWN:
            meta.record_state(State.UNKNOWN, at_ns=now)
        meta.error = error
        return
    try:
        path = transition_path(meta.last_known, observed)
    except ForbiddenTransition as e:
        if meta.state is not State.UNKNOWN:
            meta.record_state(State.UNKNOWN, at_ns=now)
        meta.error = f"the VMM and markers say {observed}: {e.message}"
        return
    if not path and meta.state is State.UNKNOWN:
        path = [observed]          # back from Unknown to the state it was in
    for i, state in enumerate(path):
        meta.record_state(state, inferred=inferred or i < len(path) - 1, at_ns=now)
        if (state is State.RUNNING and not inferred and meta.time_to_running is None
                and meta.boot_requested_at):
            at = running_seen_at(meta) or now
            meta.mark(tl.RUNNING, at)
            meta.time_to_running = round((at - meta.boot_requested_at) / 1e9, 6)
        elif state is State.STOPPED:
            meta.mark(tl.QEMU_EXITED, now)


async def _scan(instance: Instance, meta: Metadata, now: int, *, final: bool = False) -> None:
    if control.enabled(meta.argv):      # only PID 1's channel: the program cannot forge it
        found = control.trusted_markers(control.read_lines(
            control.log_path(instance.logs_dir), meta.log_since, final=final))
    else:
        async with locks.alocked(instance.logs_lock, shared=True, timeout=LOCK_TIMEOUT):
            found = markers.scan_logs(instance.logs_dir, meta.log_since, final=final)
    meta.markers.merge(markers.record_from(found, now))
    meta.markers.scanned_at = now


UNCLEAN_EXIT = "QEMU was killed (SIGKILL or a crash: it exited without removing its pidfile)"


def unclean_exit(instance: Instance) -> str | None:
    """How QEMU ended, as far as a process that is not its parent can tell: QEMU removes
    its pidfile on every orderly exit (a guest power-off, `quit`, SIGTERM), so a pidfile
    nobody holds a lock on means it was killed.  None after an orderly exit."""
    return UNCLEAN_EXIT if instance.pidfile.exists() else None


async def observe_locked(instance: Instance, meta: Metadata, *, live: MarkerRecord | None = None,
                          scan: bool = True, events: tuple[tuple[str, int], ...] = ()) -> None:
    """The one observation path: probe the VMM, merge markers, settle `meta.state`.
    The caller holds the metadata open (`metadata.update`: its lock; it saves)."""
    probe = await vmm.probe(instance)
    now = now_ns()
    for name, at in events:
        meta.mark(name, at)
    if live is not None:
        meta.markers.merge(live)
    if probe.vmm not in (Vmm.ABSENT, Vmm.UNREACHABLE):
        rescued = await logfiles.rotate_if_needed(instance, max_bytes=meta.log_max_bytes,
                                                  keep=meta.log_keep, since_ns=meta.log_since)
        if rescued and not control.enabled(meta.argv):
            meta.markers.merge(markers.record_from(rescued, now))
    if (scan and probe.vmm is Vmm.RUNNING
            and markers.scan_due(meta.markers, meta.agent_skipped, now)):
        await _scan(instance, meta, now)
    if probe.vmm is Vmm.ABSENT and meta.boot > 0 and not meta.logs_final:
        # The VMM is gone, so the log is complete: one last scan (EXIT, FATAL, stages).
        await _scan(instance, meta, now, final=True)
        meta.logs_final = True
        status = run_mod.reap_detached(meta.pid) if meta.pid else None
        if meta.vmm_exit is None:
            meta.vmm_exit = (f"QEMU {run_mod.describe_returncode(status)}" if status is not None
                             else unclean_exit(instance))
    _note_marker_events(meta)
    if (probe.vmm is Vmm.ABSENT and meta.last_known in (State.CREATED, State.INITIALIZING)
            and meta.markers.ready(meta.agent_skipped)):
        # Nobody looked while it was Running, but the complete log shows it got there:
        # the markers were printed while the VMM ran.  Recorded as inferred, and without
        # a time-to-Running, which only counts what the host saw as it happened.
        apply_observation(meta, State.RUNNING, now=now, inferred=True)
    observed = derive_state(Observation(probe.vmm, program_started=meta.markers.program_started,
                                        agent_ready=meta.markers.agent_ready,
                                        agent_skipped=meta.agent_skipped,
                                        snapshot=snapshot.exists(instance)))
    apply_observation(meta, observed, error=probe.error, now=now)


async def observe(instance: Instance, *, live: MarkerRecord | None = None, scan: bool = True,
                  events: tuple[tuple[str, int], ...] = ()) -> Metadata:
    """Look at the instance now; record and return what was seen."""
    async with metadata.update(instance) as meta:
        await observe_locked(instance, meta, live=live, scan=scan, events=events)
    return meta


# --- create / start -----------------------------------------------------------

def _config_value(config: dict | bytes | None) -> dict | str | None:
    if isinstance(config, bytes):
        return config.decode("utf-8", errors="replace")
    return config


def _new_instance(home: Path, opts: options.CreateOptions, name: str | None, config,
                  accel: accel_mod.Accel, requested: int) -> Instance:
    """Claim the name and make the instance's directory with its first metadata.json
    (state Stopped, no QEMU command line yet); nothing is left if that fails."""
    def first_metadata(instance: Instance) -> Metadata:
        command = config["entrypoint"] + config["cmd"] if isinstance(config, dict) else opts.command
        meta = Metadata(id=instance.id, name=name or instance.id, created_at=requested,
                        command=list(command), config=_config_value(config),
                        agent_skipped=prepare.agent_skipped(config), argv=[],
                        accel=accel.value, log_max_bytes=opts.log_max_size,
                        log_keep=opts.log_files, options=options.to_json(opts))
        meta.record_state(State.STOPPED, at_ns=requested)
        return meta
    return claim(home, name, first_metadata)


def claim(home: Path, name: str | None, first_metadata: Callable[[Instance], Metadata]) -> Instance:
    """Under the home's names lock: refuse a name in use, make a new instance directory
    and save `first_metadata(instance)` in it; nothing is left if that fails."""
    with home_lock(home):
        if name is not None:
            for _, other in metadata.load_all(home):
                if other.name == name:
                    raise Conflict(f"the name {name!r} is already in use by instance "
                                   f"{other.id}", hint=f"choose another --name, or `kindling "
                                                       f"delete {name}` first")
        instance = Instance.create(home)
        try:
            metadata.save(instance, first_metadata(instance))
        except BaseException:
            instance.remove()
            raise
    return instance


async def create(opts: options.CreateOptions, home: Path | None = None, *,
                 verbose: Callable[[str], None] | None = None) -> tuple[Instance, Metadata]:
    """Make an instance and boot it; returns once the guest has been started
    (state Initializing: markers come later).  A failure removes what was made."""
    requested = now_ns()
    home = Path(home or kindling_home())
    opts = options.checked(opts, home)
    tmpl = template.load(home, opts.template) if opts.template else None
    if tmpl is not None:
        opts = clone.options_for(tmpl, opts)     # its image and VM options are the template's
    prepare.check_inputs(opts)
    name = check_name(opts.name) if opts.name else None
    config = prepare.config_for(opts)
    binary = qemu.find_qemu()
    accel = accel_mod.resolve(opts.accel)
    with disk_full_errors(home):
        instance = _new_instance(home, opts, name, config, accel, requested)
        try:
            if opts.net:
                netns.create(instance.id)
            artifacts = prepare.build_artifacts(opts, instance.images_dir)
            if tmpl is not None:
                clone.check_fresh(tmpl, artifacts)
            images_ready = now_ns()
            config = prepare.settle_headers(config, artifacts, opts)
            disks = prepare.make_disks(instance, artifacts, config, opts)
            disks_ready = now_ns()
            if tmpl is not None:
                argv = template.machine_argv(instance, artifacts, clone.disks_for(tmpl, instance, disks),
                                             opts, tmpl)
            else:
                argv = prepare.qemu_argv(instance, artifacts, disks, accel, opts, binary)
            if verbose is not None:
                verbose(f"instance {instance.dir}")
                verbose(f"running: {run_mod.format_command(argv)}")
            async with metadata.update(instance) as meta:
                meta.argv = argv
                meta.config = _config_value(config)
            meta = await _boot(instance, requested,
                               ((tl.IMAGES_READY, images_ready), (tl.DISKS_READY, disks_ready)),
                               argv=qemu.with_kernel_args(argv, opts.first_launch_kernel_args),
                               launch=_clone_launch(tmpl, config))
        except BaseException:
            with trio.CancelScope(shield=True):
                await vmm.stop(instance, graceful=0)
            instance.remove()
            raise
    return instance, meta


def _clone_launch(tmpl: template.Template | None, config: dict | bytes):
    """A clone's launch (its config.json's bytes go on its resume line), or None."""
    if tmpl is None:
        return None
    from image_build.disks import config_bytes
    return partial(clone.launch, tmpl, config_bytes(config))


async def _boot(instance: Instance, requested: int,
                prep_events: tuple[tuple[str, int], ...] = (), *,
                argv: list[str] | None = None, launch=None) -> Metadata:
    """Start a new boot of a stopped instance: fresh log, QEMU with -S, then cont.
    `argv`: this launch's command line (default: the instance's, meta.argv); `launch`:
    instead of that, a clone's restore from its template (clone.launch)."""
    async with metadata.update(instance) as meta:
        if vmm.pid_of(instance) is not None:
            await observe_locked(instance, meta)     # someone else started it meanwhile
            return meta
        await _boot_locked(instance, meta, requested, prep_events, argv, launch)
    return meta


async def _boot_locked(instance: Instance, meta: Metadata, requested: int,
                       prep_events: tuple[tuple[str, int], ...], argv: list[str] | None,
                       launch=None):
    if not meta.argv:
        die(f"instance {meta.name} was never completely created (its create was "
            "interrupted)", hint=f"delete it with `kindling delete {meta.name}`")
    meta.boot += 1
    meta.boot_requested_at = requested
    meta.events = []
    meta.markers = MarkerRecord()
    meta.time_to_running = None
    meta.vmm_exit = None
    meta.logs_final = False
    meta.pid = None
    meta.restored_at = None
    meta.mark(tl.REQUESTED, requested)
    for name, at in prep_events:
        meta.mark(name, at)
    meta.log_since = logfiles.start_fresh_log(instance, meta.log_keep)
    instance.qmp_socket.unlink(missing_ok=True)     # left by a killed QEMU
    meta.mark(tl.LAUNCH)
    if launch is None:
        meta.pid = await vmm.launch(instance, argv or meta.argv)
        meta.mark(tl.VMM_READY)
        await observe_locked(instance, meta, scan=False)     # Created (-S)
        await vmm.cont(instance)
    else:                          # restored, `cont`, resumed: the guest runs already
        meta.pid = await launch(instance, argv or meta.argv)
    meta.mark(tl.GUEST_STARTED)
    await observe_locked(instance, meta, scan=False)     # Initializing


async def relaunch(instance: Instance, boot: int, reason: str) -> Metadata:
    """The early-boot watchdog's action (host_shim/watchdog.py): end boot `boot`, which
    showed no sign of PID 1, and launch the instance again with the same disks and
    command line, as part of the same start request.  Recorded in meta.relaunches and
    on the history's Stopped entry.  Does nothing if the instance is no longer in that
    boot or PID 1 has been seen (another waiter acted, or the guest got going)."""
    async with metadata.update(instance) as meta:
        await observe_locked(instance, meta)
        if (meta.boot != boot or meta.markers.markers or meta.markers.stages
                or meta.state not in (State.CREATED, State.INITIALIZING)):
            return meta
        await vmm.stop(instance, graceful=0)
        await observe_locked(instance, meta)
        if meta.state is State.STOPPED and meta.history[-1]["boot"] == boot:
            meta.history[-1]["reason"] = reason
        meta.relaunches.append({"boot": boot, "at": now_ns(),
                                "requested": meta.boot_requested_at, "reason": reason})
        log.note(f"{reason}; the VM was ended and is launched again (relaunch "
                 f"{watchdog.relaunches_of_request(meta)} of {watchdog.MAX_RELAUNCHES})")
        await _boot_locked(instance, meta, meta.boot_requested_at, (), None)
    return meta


async def start(instance: Instance) -> Metadata:
    """Boot a Stopped instance again (or start the guest of a Created one).  Returns
    once the guest has been started; an instance already started is left alone."""
    meta = await observe(instance)
    if meta.state is State.CREATED:
        await vmm.cont(instance)
        return await observe(instance, events=((tl.GUEST_STARTED, now_ns()),))
    if meta.state in (State.INITIALIZING, State.RUNNING):
        return meta
    if meta.state is State.STOPPED:
        return await _boot(instance, now_ns())
    if meta.state is State.STANDBY:
        raise Conflict(f"cannot start instance {meta.name}: it is Standby (its VM state is in "
                       f"a snapshot)", hint=f"`kindling restore {meta.name}` resumes it from the "
                       f"snapshot; `kindling stop {meta.name}` drops the snapshot, then "
                       f"`kindling start` boots it afresh")
    raise Conflict(f"cannot start instance {meta.name}: it is {meta.state}",
                   hint=meta.error or f"see `kindling inspect {meta.name}`")


# --- stop / delete ------------------------------------------------------------

async def stop(instance: Instance, *, timeout: float = DEFAULT_STOP_TIMEOUT,
               by: str = "kindling stop") -> Metadata:
    """Stop the VM: an ACPI power-down with `timeout` seconds to act on it (only when
    the guest is Running: during boot or while Paused nothing in the guest could), then
    QMP quit, SIGTERM, SIGKILL.  Stopping a stopped instance does nothing.  `by`
    goes into the recorded VMM exit ("SIGTERM by kindling stop").  The instance's
    snapshot, if any, is dropped: a Standby instance becomes Stopped."""
    meta = await observe(instance)
    if meta.state in (State.STOPPED, State.STANDBY):
        snapshot.drop(instance)
        return await observe(instance) if meta.state is State.STANDBY else meta
    graceful = timeout if meta.state is State.RUNNING else 0.0
    how = await vmm.stop(instance, graceful=graceful)
    snapshot.drop(instance)
    async with metadata.update(instance) as meta:
        await observe_locked(instance, meta)
        if how is not None:
            said = meta.vmm_exit if meta.vmm_exit != UNCLEAN_EXIT else None   # `how` says it
            meta.vmm_exit = f"{how} by {by}" + (
                f" (QEMU {said.removeprefix('QEMU ')})" if said else "")
    return meta


async def delete(instance: Instance) -> Metadata:
    """Stop the VM at once (no grace period) and remove everything of the instance."""
    meta = await observe(instance)
    with trio.CancelScope(shield=True):
        await vmm.stop(instance, graceful=0)
        instance.remove()
    return meta


# --- list / inspect -----------------------------------------------------------

async def list_instances(home: Path | None = None) -> list[tuple[Instance, Metadata]]:
    home = Path(home or kindling_home())
    found = []
    for instance, meta in metadata.load_all(home):
        try:
            meta = await observe(instance)
        except NoSuchInstance:
            continue
        except KindlingError as e:    # e.g. a lock held too long: show what is recorded
            meta.state, meta.error = State.UNKNOWN, e.message
        found.append((instance, meta))
    return sorted(found, key=lambda im: im[1].created_at)


# --- wait ---------------------------------------------------------------------

class WaitTimeout(KindlingError):
    pass


def _why_not_running(meta: Metadata) -> str:
    fatal = meta.markers.get(protocol.FATAL)
    if fatal is not None:
        return (f"guest failed in stage {fatal.fields.get('stage', '?')}: "
                f"{fatal.fields.get('error', '(no message)')}")
    if meta.markers.program_started and not meta.agent_skipped:
        return "the program started but the agent never reported ready"
    return f"the VM ended ({meta.vmm_exit})" if meta.vmm_exit else "the VM ended"


def _running_outcome(meta: Metadata) -> bool:
    """True when the wait for Running is over (it was reached); raises if it cannot be."""
    if meta.state is State.RUNNING or meta.reached_this_boot(State.RUNNING):
        return True
    if meta.state in (State.STOPPED, State.SHUTDOWN, State.STANDBY):
        die(f"instance {meta.name} stopped before it was Running: {_why_not_running(meta)}",
            hint=f"see `kindling logs {meta.name}`")
    return False


def _stopped_outcome(meta: Metadata) -> bool:
    return meta.state in (State.STOPPED, State.STANDBY)


async def _wait_until(instance: Instance, outcome: Callable[[Metadata], bool],
                      progress: Progress) -> Metadata:
    """Observe until `outcome(meta)` is true, reading the serial log as it grows so
    that markers are seen (and time-to-Running measured) within ~20 ms; what the
    console showed goes into `progress`."""
    meta = await observe(instance)
    if outcome(meta):
        return meta
    live = MarkerRecord()
    follower = ConsoleFollower(instance, meta.log_since, progress=progress,
                               trusted=control.enabled(meta.argv))
    boot = meta.boot
    dog = watchdog.EarlyBootWatchdog.for_boot(meta)
    async with follower:
        next_observe = trio.current_time() + OBSERVE_EVERY
        while True:
            batch = await follower.next()
            seen = now_ns()
            dog.see(batch)
            if reason := dog.due(seen, lambda: watchdog.qemu_cpu_seconds(meta.pid)):
                meta = await relaunch(instance, boot, reason)
                progress.reset()
                return await _wait_until(instance, outcome, progress)
            events: list[tuple[str, int]] = []
            changed = False
            for marker in batch.markers:
                if live.add(marker, seen):
                    changed |= marker.kind != protocol.STAGE    # stages ride along
            if batch.first_bytes and follower.started_empty:   # arrived just now
                events.append((tl.FIRST_CONSOLE_BYTE, seen))
            gone = vmm.pid_of(instance) is None
            if gone:
                events.append((tl.QEMU_EXITED, seen))
            if changed or events or gone or trio.current_time() >= next_observe:
                meta = await observe(instance, live=live, scan=False, events=tuple(events))
                next_observe = trio.current_time() + OBSERVE_EVERY
                if outcome(meta):
                    return meta
                if meta.boot != boot:       # started again meanwhile: follow the new boot
                    progress.reset()
                    return await _wait_until(instance, outcome, progress)


class BootTimeout(WaitTimeout):
    """The boot deadline passed before the guest was Running: the VM was stopped."""


async def wait(instance: Instance, target: State, *, timeout: float | None = None) -> Metadata:
    """Wait until the instance is `target` (Running or Stopped).

    Running: returns once the host has seen the markers Running needs, reading the
    serial log as it grows (so time-to-Running is measured to ~20 ms), also when
    the instance has already been Running in this boot.  Raises when it stopped
    before it got there.  `timeout` is then the boot deadline (default
    DEFAULT_BOOT_TIMEOUT): past it, a guest still booting is taken as hung -- the
    VM is stopped and BootTimeout (exit 125) names the last stage and marker seen.
    Stopped: waits forever unless `timeout` is given.
    """
    if target not in (State.RUNNING, State.STOPPED):
        die(f"cannot wait for {target}", hint="wait for running or stopped")
    running = target is State.RUNNING
    if running and timeout is None:
        timeout = DEFAULT_BOOT_TIMEOUT
    progress = Progress()
    try:
        with trio.fail_after(timeout if timeout is not None else math.inf):
            return await _wait_until(instance, _running_outcome if running else _stopped_outcome,
                                     progress)
    except trio.TooSlowError:
        meta = await observe(instance)
    if running and meta.state in (State.CREATED, State.INITIALIZING):
        await stop(instance, timeout=0, by="kindling wait (boot deadline)")
        raise BootTimeout(f"instance {meta.name} was not Running within {timeout:g} s, the boot "
                          f"deadline ({progress.describe()}); the VM was stopped",
                          hint=f"if the guest is only slow, raise --timeout; see `kindling "
                               f"logs {meta.name}`", exit_code=EXIT_KINDLING)
    why = f": {meta.error}" if meta.error else ""
    raise WaitTimeout(f"timed out after {timeout:g} s waiting for instance {meta.name} to be "
                      f"{target} (it is {meta.state}{why})",
                      hint=f"see `kindling logs {meta.name}`")


# --- logs ---------------------------------------------------------------------

def _print_lines(lines, write: Callable[[str], None], source: str) -> None:
    for line in lines:
        text = console.user_text(line) if source == "app" else line
        if text is not None:
            write(text)


async def logs(instance: Instance, write: Callable[[str], None], *, source: str = "app",
               follow: bool = False) -> None:
    """Write the instance's log lines (all boots) to `write`; with `follow`, keep going
    until the VMM exits.  `app` is the serial console without sentinel lines."""
    if source not in ("app", "vmm"):
        die(f"unknown log source {source!r}", hint="use --source app or --source vmm")
    meta = metadata.load(instance)      # raises if it was deleted
    if source == "vmm":
        await _vmm_log(instance, write, follow)
        return
    since, trusted = None, control.enabled(meta.argv)
    if trusted:
        # Earlier boots as before; this boot's markers vouched for by its control channel.
        await _print_earlier_boots(instance, meta.log_since, write)
        since = meta.log_since
    gate = control.ConsoleGate()
    async with ConsoleFollower(instance, since, trusted=trusted) as follower:
        next_observe = trio.current_time() + OBSERVE_EVERY
        while True:
            running = vmm.pid_of(instance) is not None
            final = not (follow and running)    # decided before reading: it then gets all
            batch = await follower.next(final=final)
            _show_batch(batch, gate, write, source)
            if final:
                return
            if trio.current_time() >= next_observe:
                next_observe = trio.current_time() + OBSERVE_EVERY
                await observe(instance)       # also rotates the log while we follow it


async def _print_earlier_boots(instance: Instance, since: int | None,
                               write: Callable[[str], None]) -> None:
    async with locks.alocked(instance.logs_lock, shared=True, timeout=LOCK_TIMEOUT):
        fresh = markers.fresh_logs(instance.logs_dir, since)
        older = [p for p in markers.app_logs_newest_first(instance.logs_dir) if p not in fresh]
        data = b"".join(reversed(list(markers.read_files(older))))
    splitter = console.LineSplitter()
    _print_lines(splitter.feed(data) + splitter.flush(), write, "app")


def _show_batch(batch, gate: control.ConsoleGate, write: Callable[[str], None],
                source: str) -> None:
    """Write a batch of console lines; with a control channel, a marker-shaped line is
    hidden only when the channel vouches for it (host_shim/control.py)."""
    if batch.control is None:
        _print_lines(batch.lines, write, source)
        return
    for line, at in gate.take(batch, trio.current_time()):
        text = line.rstrip("\r") if at is None else line[:at].rstrip()
        if text:
            write(text)


async def _vmm_log(instance: Instance, write: Callable[[str], None], follow: bool) -> None:
    splitter = console.LineSplitter()
    try:
        f = open(instance.vmm_log, "rb")
    except FileNotFoundError:
        return
    with f:
        while True:
            running = vmm.pid_of(instance) is not None
            for line in splitter.feed(f.read()):
                write(line)
            if not (follow and running):
                for line in splitter.flush():
                    write(line)
                return
            await trio.sleep(POLL_INTERVAL)


# --- analyze ------------------------------------------------------------------

async def analyze(instance: Instance) -> Metadata:
    """The instance with its boot timeline complete: a full scan of this boot's logs
    (explicitly asked for, so not throttled) for stages printed after Running."""
    async with metadata.update(instance) as meta:
        await observe_locked(instance, meta)
        await _scan(instance, meta, now_ns(), final=vmm.pid_of(instance) is None)
        _note_marker_events(meta)
    return meta
