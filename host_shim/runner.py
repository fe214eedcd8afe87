"""`kindling run`: create + wait + stream + exit code, on top of host_shim/lifecycle.py.

1. `lifecycle.create` checks the inputs, builds what is missing (cached), makes
   the disks and boots the VM (QEMU detached, its console appended to logs/app.log);
2. the supervisor follows that log from its first byte: program output goes to
   stdout, boot chatter to stderr with --verbose, markers into the instance's
   record (`lifecycle.observe` derives the state, printed as it changes); it
   stops the VM on timeout or on SIGINT/SIGTERM/SIGHUP, and after the guest's
   HYPEMAN-EXIT if the guest does not power off by itself;
3. it prints the boot timeline, removes the instance (unless --keep) and exits
   with the program's exit code -- 125 for Kindling's own errors, 128+N when it
   was stopped by signal N.
"""

import os
import signal
import sys
from collections import deque
from dataclasses import dataclass, field

import trio

from initsys import protocol
from initsys.protocol import Marker

from . import console, control, lifecycle, log, logfiles, vmm
from . import run as run_mod
from . import timeline as tl
from .errors import die
from .instance import Instance
from .markers import MarkerRecord
from .metadata import Metadata
from .prepare import CreateOptions
from .state import State

DEFAULT_TIMEOUT = 120.0

# After HYPEMAN-EXIT the guest powers off by itself; give it this long before stopping QEMU.
POWEROFF_GRACE = 10.0
# Console lines kept for error messages.
LAST_LINES = 20
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class RunOptions(CreateOptions):
    timeout: float = DEFAULT_TIMEOUT
    keep: bool = False
    verbose: bool = False


@dataclass
class Outcome:
    """What happened to the VM, for the final report."""
    exit_marker: Marker | None = None
    fatal_marker: Marker | None = None
    qemu_returncode: int | None = None
    qemu_stopped: str | None = None        # how kindling stopped it, if it did
    timed_out: bool = False
    signal: int | None = None
    last_lines: deque = field(default_factory=lambda: deque(maxlen=LAST_LINES))


class Signals:
    """SIGINT/SIGTERM/SIGHUP: remember the first, cancel whatever phase is running."""

    def __init__(self, receiver):
        self.receiver = receiver
        self.signum: int | None = None
        self.scope: trio.CancelScope | None = None

    async def watch(self) -> None:
        async for signum in self.receiver:
            if self.signum is None:
                self.signum = signum
                log.note(f"{signal.Signals(signum).name} received; stopping the VM")
            if self.scope is not None:
                self.scope.cancel()


class Supervisor:
    """Turns the console of a created instance into output, states and an Outcome."""

    def __init__(self, instance: Instance, meta: Metadata, opts: RunOptions):
        self.instance = instance
        self.meta = meta
        self.opts = opts
        self.outcome = Outcome()
        self.phase = console.Phase.BOOT
        self.live = MarkerRecord()
        self.events: list[tuple[str, int]] = []
        self.printed: State | None = None
        self.finished = trio.Event()      # EXIT or FATAL seen
        # The control channel (host_shim/control.py): the only source of facts when present.
        self.control = (control.ControlReader(instance.logs_dir)
                        if control.enabled(meta.argv) else None)
        self.gate = control.ConsoleGate()

    def elapsed(self) -> float:
        return (lifecycle.now_ns() - self.meta.boot_requested_at) / 1e9

    def show_state(self, meta: Metadata) -> None:
        if self.finished.is_set() or meta.state not in (State.INITIALIZING, State.RUNNING):
            return
        if meta.state != self.printed:
            self.printed = meta.state
            at = (meta.time_to_running if meta.state is State.RUNNING and meta.time_to_running
                  else self.elapsed())
            log.note(f"{meta.state} ({at:.2f} s)")

    # -- console --

    def on_line(self, line: str) -> bool:
        """Show a console line; True when it carried a marker that may change the state
        (no control channel: the console's markers are trusted)."""
        self.outcome.last_lines.append(line)
        item = console.classify(line, self.phase)
        self._display(item)
        return False if item.marker is None else self.on_marker(item.marker)

    def on_vouched(self, line: str, at: int | None) -> None:
        """Show a console line decided by the control channel: PID 1's marker starts at
        `at`, or (None) the whole line is text, however much it looks like a marker."""
        self.outcome.last_lines.append(line)
        if at is None:
            self._display(console.as_text(line, self.phase))
            return
        if prefix := line[:at].rstrip():
            self._display(console.as_text(prefix, self.phase))
        self._display(console.classify(line[at:], self.phase))

    def _display(self, item: console.Classified) -> None:
        self.phase = item.phase
        if item.stream is console.Stream.PROGRAM:
            self._show(sys.stdout, item.text)
        elif item.stream is console.Stream.BOOT and self.opts.verbose:
            self._show(sys.stderr, item.text)

    def on_marker(self, marker: Marker) -> bool:
        """A marker PID 1 printed: its facts.  True when it may change the state."""
        changed = self.live.add(marker, lifecycle.now_ns())
        if marker.kind == protocol.EXIT and self.outcome.exit_marker is None:
            self.outcome.exit_marker = marker
            code = marker.fields.get("code", "?")
            message = marker.fields.get("message", "")
            log.note(f"exited code={code} {protocol.go_quote(message)} ({self.elapsed():.2f} s)")
            self.finished.set()
        elif marker.kind == protocol.FATAL and self.outcome.fatal_marker is None:
            self.outcome.fatal_marker = marker
            self.finished.set()
        return changed and marker.kind != protocol.STAGE

    @staticmethod
    def _show(stream, text: str) -> None:
        try:
            stream.write(text + "\n")
            stream.flush()
        except BrokenPipeError:
            # `kindling run ... | head`: the reader is gone.  Keep running the VM to the
            # end (its exit code still matters) and send further output nowhere.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)

    async def observe(self) -> None:
        events, self.events = tuple(self.events), []
        self.meta = await lifecycle.observe(self.instance, live=self.live, scan=False,
                                            events=events)
        self.show_state(self.meta)

    async def follow_console(self, done: trio.Event) -> None:
        follower = logfiles.LogFollower(self.instance, self.meta.log_since)
        next_observe = trio.current_time() + lifecycle.OBSERVE_EVERY
        try:
            while True:
                finished = done.is_set()    # decided before reading: the read sees everything
                lines = await follower.poll()
                if follower.bytes_read and not any(n == tl.FIRST_CONSOLE_BYTE
                                                   for n, _ in self.events):
                    if not any(e.name == tl.FIRST_CONSOLE_BYTE for e in self.meta.events):
                        self.events.append((tl.FIRST_CONSOLE_BYTE, lifecycle.now_ns()))
                changed = self.take(lines + (follower.flush() if finished else []), finished)
                if finished:
                    return
                if changed or trio.current_time() >= next_observe:
                    next_observe = trio.current_time() + lifecycle.OBSERVE_EVERY
                    await self.observe()
                if not lines:
                    with trio.move_on_after(logfiles.POLL_INTERVAL):
                        await done.wait()
        finally:
            follower.close()
            if self.control is not None:
                self.control.close()

    def take(self, lines: list[str], final: bool) -> bool:
        """New console lines (and control lines): shown, and their facts taken."""
        if self.control is None:
            changed = False
            for line in lines:
                changed |= self.on_line(line)
            return changed
        changed = False
        new = self.control.poll(final)
        for marker in control.trusted_markers(new):
            changed |= self.on_marker(marker)
        self.gate.vouch(new)
        self.gate.push(lines)
        if final and self.gate.control_lines == 0:
            # PID 1 never opened the port (it failed before): no program ran, so the
            # console's markers (a FATAL) are its own.
            for marker in self.gate.held_markers():
                changed |= self.on_marker(marker)
        for line, at in self.gate.decide(trio.current_time(), final):
            self.on_vouched(line, at)
        return changed

    # -- the run --

    async def run(self, signals: Signals) -> Outcome:
        self.show_state(self.meta)
        pid = self.meta.pid
        console_done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.follow_console, console_done)
            with trio.CancelScope() as vm_scope:
                signals.scope = vm_scope
                if signals.signum is not None:
                    vm_scope.cancel()
                async with trio.open_nursery() as vm_nursery:
                    vm_nursery.start_soon(self._poweroff_grace)
                    with trio.move_on_after(self.opts.timeout) as timeout_scope:
                        self.outcome.qemu_returncode = await vmm.wait_exit(pid)
                    vm_nursery.cancel_scope.cancel()
            signals.scope = None
            self.outcome.timed_out = timeout_scope.cancelled_caught
            self.outcome.signal = signals.signum
            await self.stop_vm()
            # QEMU has exited, so the log is complete: the follower drains it and returns.
            console_done.set()
        await self.observe()
        return self.outcome

    async def _poweroff_grace(self) -> None:
        await self.finished.wait()
        await trio.sleep(POWEROFF_GRACE)
        if self.opts.verbose:
            log.note(f"guest did not power off within {POWEROFF_GRACE:g} s; stopping QEMU")
        await self.stop_vm()

    async def stop_vm(self) -> None:
        """QMP quit, then SIGTERM, then SIGKILL (shielded).  Never leaves QEMU behind."""
        with trio.CancelScope(shield=True):
            how = await vmm.stop(self.instance, graceful=0)
            if how is not None and self.outcome.qemu_stopped is None:
                self.outcome.qemu_stopped = how
            if self.outcome.qemu_returncode is None:
                self.outcome.qemu_returncode = run_mod.reap_detached(self.meta.pid)
            self.events.append((tl.QEMU_EXITED, lifecycle.now_ns()))


# --- report ---------------------------------------------------------------------

def _last_lines_hint(outcome: Outcome, instance: Instance, opts: RunOptions) -> str:
    parts = []
    if outcome.last_lines:
        parts.append("last console lines:\n" + "\n".join(f"  {l}" for l in outcome.last_lines))
    else:
        parts.append("the guest printed nothing on its console")
    said = vmm.tail(instance.vmm_log)
    if said:
        parts.append("QEMU said:\n" + said)
    if opts.keep:
        parts.append(f"logs: {instance.logs_dir}")
    else:
        parts.append("rerun with --verbose to see the boot, or --keep to keep the logs")
    return "\n".join(parts)


def exit_status(outcome: Outcome, instance: Instance, opts: RunOptions) -> int:
    """The program's exit code, or a KindlingError saying why there is none."""
    if outcome.signal is not None:
        name = signal.Signals(outcome.signal).name
        die(f"interrupted by {name}; the VM was stopped", exit_code=128 + outcome.signal)
    if outcome.exit_marker is not None:
        raw = outcome.exit_marker.fields.get("code")
        try:
            code = int(raw)
        except (TypeError, ValueError):
            die(f"the guest reported an unreadable exit code {raw!r}",
                hint=_last_lines_hint(outcome, instance, opts))
        if not 0 <= code <= 255:
            die(f"the guest reported an out-of-range exit code {code}")
        return code
    if outcome.fatal_marker is not None:
        stage = outcome.fatal_marker.fields.get("stage", "?")
        error = outcome.fatal_marker.fields.get("error", "(no message)")
        die(f"guest failed in stage {stage}: {error}",
            hint=_last_lines_hint(outcome, instance, opts) if opts.verbose else None)
    if outcome.timed_out:
        die(f"timed out after {opts.timeout:g} s before the program finished; the VM was stopped",
            hint="raise --timeout; " + _last_lines_hint(outcome, instance, opts))
    status = outcome.qemu_returncode
    how = run_mod.describe_returncode(status) if status is not None else "stopped"
    die(f"the VM ended before the program finished (QEMU {how})",
        hint=_last_lines_hint(outcome, instance, opts))


# --- the whole run ------------------------------------------------------------------

async def run_async(opts: RunOptions, home=None) -> int:
    if not opts.timeout > 0:
        die(f"--timeout {opts.timeout:g}: must be positive")
    with trio.open_signal_receiver(*SIGNALS) as receiver:
        signals = Signals(receiver)
        error = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(signals.watch)
            try:
                status = await _run(opts, home, signals)
            except Exception as e:   # raised here, not as a nursery's ExceptionGroup
                error = e
            finally:
                nursery.cancel_scope.cancel()
        if error is not None:
            raise error
        return status


async def _run(opts: RunOptions, home, signals: Signals) -> int:
    with trio.CancelScope() as create_scope:
        signals.scope = create_scope
        instance, meta = await lifecycle.create(
            opts, home, verbose=log.note if opts.verbose else None)
    signals.scope = None
    if create_scope.cancelled_caught:      # create removed what it had made
        die(f"interrupted by {signal.Signals(signals.signum).name}",
            exit_code=128 + signals.signum)
    try:
        supervisor = Supervisor(instance, meta, opts)
        outcome = await supervisor.run(signals)
        report = tl.format_timeline(supervisor.meta.timeline())
        if supervisor.meta.time_to_running is not None:
            report += f"\ntime to Running: {supervisor.meta.time_to_running:.3f} s"
        if report:
            print(report, file=sys.stderr, flush=True)
        return exit_status(outcome, instance, opts)
    finally:
        with trio.CancelScope(shield=True):
            await vmm.stop(instance, graceful=0)
            if opts.keep:
                log.note(f"instance kept: {instance.dir} (`kindling list` shows it as "
                         f"{meta.name})")
            else:
                instance.remove()


def run(opts: RunOptions, home=None) -> int:
    return trio.run(run_async, opts, home)
