"""`kindling run`: create + wait + stream + exit code, on top of host_shim/lifecycle.py.

1. `lifecycle.create` checks the inputs, builds what is missing (cached), makes
   the disks and boots the VM (QEMU detached, its console appended to logs/app.log);
2. the supervisor follows that log from its first byte (follow.ConsoleFollower):
   program output goes to stdout, boot chatter to stderr with --verbose, markers
   into the instance's record (`lifecycle.observe` derives the state, printed as
   it changes); it stops the VM on timeout, past the boot deadline, on
   SIGINT/SIGTERM/SIGHUP, and after the guest's HYPEMAN-EXIT if the guest does
   not power off by itself;
3. it prints the boot timeline, removes the instance (unless --keep) and exits
   with the program's exit code -- 125 for Kindling's own errors, 128+N when it
   was stopped by signal N.

A systemd-mode guest never prints HYPEMAN-EXIT (the program is the init), so
`kindling run --init-mode systemd -- CMD` boots the image's init, waits for
Running, runs CMD through the agent (its output streamed, the console shown only
with --verbose), stops the guest and exits with CMD's code (initmode.split_run).

The boot deadline (--boot-timeout): the guest must show its program started
(exec mode) or be Running (a program run through the agent) within it, else the
VM is stopped and the error names the last boot stage and marker seen.
"""

import os
import shlex
import signal
import sys
from collections import deque
from dataclasses import dataclass, field, replace
from functools import partial

import trio

from initsys import protocol
from initsys.protocol import Marker

from . import agent_ops, console, control, follow, initmode, lifecycle, log, vmm, watchdog
from . import run as run_mod
from . import timeline as tl
from .agent_client import AgentError, open_agent
from .errors import die
from .instance import Instance
from .markers import MarkerRecord
from .metadata import Metadata
from .options import DEFAULT_RUN_TIMEOUT, RunOptions
from .prepare import image_command_for
from .state import State

DEFAULT_TIMEOUT = DEFAULT_RUN_TIMEOUT

# After HYPEMAN-EXIT the guest powers off by itself; give it this long before stopping QEMU.
POWEROFF_GRACE = 10.0
# Console lines kept for error messages.
LAST_LINES = 20
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class Outcome:
    """What happened to the VM, for the final report."""
    exit_marker: Marker | None = None
    fatal_marker: Marker | None = None
    qemu_returncode: int | None = None
    qemu_stopped: str | None = None        # how kindling stopped it, if it did
    timed_out: bool = False
    boot_timed_out: bool = False
    signal: int | None = None
    program_code: int | None = None        # a program run through the agent: its exit code
    agent_error: str | None = None         # ... or why it has none
    progress: str = ""                     # how far the boot got (follow.Progress.describe)
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
    """Turns the console of a created instance into output, states and an Outcome;
    with `program`, runs it through the agent once the guest is Running."""

    def __init__(self, instance: Instance, meta: Metadata, opts: RunOptions, emit=None,
                 program: tuple[str, ...] = ()):
        self.instance = instance
        self.emit = emit                  # run --json: events.emit (states, output as events)
        self.meta = meta
        self.opts = opts
        self.program = program
        self.outcome = Outcome()
        self.progress = follow.Progress()
        self.phase = console.Phase.BOOT
        self.live = MarkerRecord()
        self.events: list[tuple[str, int]] = []
        self.printed: State | None = None
        self.finished = trio.Event()      # EXIT or FATAL seen, or the agent's program ended
        self.running = trio.Event()       # the host has seen the guest Running
        self.booted = trio.Event()        # the boot deadline is met (see _boot_deadline)
        self.gate = control.ConsoleGate()   # with a control channel: which lines are PID 1's
        self.relaunch_lock = trio.Lock()    # held while the early-boot watchdog relaunches

    def elapsed(self) -> float:
        return (lifecycle.now_ns() - self.meta.boot_requested_at) / 1e9

    def show_state(self, meta: Metadata) -> None:
        if meta.state is State.RUNNING or meta.reached_this_boot(State.RUNNING):
            self.running.set()
            self.booted.set()
        if self.finished.is_set() or meta.state not in (State.INITIALIZING, State.RUNNING):
            return
        if meta.state != self.printed:
            self.printed = meta.state
            at = (meta.time_to_running if meta.state is State.RUNNING and meta.time_to_running
                  else self.elapsed())
            if self.emit is not None:
                self.emit("state", id=meta.id, name=meta.name, state=str(meta.state),
                          at=round(at, 3))
            else:
                log.note(f"{meta.state} ({at:.2f} s)")

    # -- console --

    def show_line(self, line: str) -> None:
        """Show a console line where it belongs (sentinels never shown; no control
        channel: the console's marker lines are PID 1's).  With a program run through
        the agent, the whole console is boot chatter."""
        self.outcome.last_lines.append(line)
        self._display(console.classify(line, self.phase))

    def show(self, batch: follow.Batch) -> None:
        """Show a batch of console lines; with a control channel, a marker-shaped line
        is hidden only when the channel vouches for it (host_shim/control.py)."""
        if batch.control is None:
            for line in batch.lines:
                self.show_line(line)
            return
        for line, at in self.gate.take(batch, trio.current_time()):
            self.on_vouched(line, at)

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
        if item.stream is console.Stream.PROGRAM and not self.program and self.emit is not None:
            self.emit("output", stream="stdout", data=item.text)
        elif item.stream is console.Stream.PROGRAM and not self.program:
            self._show(sys.stdout, item.text)
        elif item.stream is not None and self.opts.verbose:
            self._show(sys.stderr, item.text)

    def on_marker(self, marker: Marker) -> bool:
        """A marker PID 1 printed: its facts.  True when it may change the state."""
        changed = self.live.add(marker, lifecycle.now_ns())
        if marker.kind == protocol.PROGRAM_START and not self.program:
            self.booted.set()
        if marker.kind == protocol.EXIT:   # the last one wins: PID 1 prints its own last
            self.outcome.exit_marker = marker
            code = marker.fields.get("code", "?")
            message = marker.fields.get("message", "")
            log.note(f"exited code={code} {protocol.go_quote(message)} ({self.elapsed():.2f} s)")
            self.finished.set()
        elif marker.kind == protocol.FATAL:
            self.outcome.fatal_marker = marker
            self.finished.set()
        if self.finished.is_set():
            self.booted.set()
        return changed and marker.kind != protocol.STAGE

    @staticmethod
    def _show(stream, text: str) -> None:
        try:
            stream.write(text + "\n")
            stream.flush()
        except BrokenPipeError:
            _to_devnull(stream.fileno())

    async def observe(self) -> None:
        events, self.events = tuple(self.events), []
        self.meta = await lifecycle.observe(self.instance, live=self.live, scan=False,
                                            events=events)
        self.show_state(self.meta)

    async def follow_console(self, done: trio.Event) -> None:
        while await self._follow_boot(done):
            pass        # relaunched by the early-boot watchdog: the new boot, from its start

    async def _follow_boot(self, done: trio.Event) -> bool:
        """Follow this boot's console until `done`; True when the early-boot watchdog
        relaunched the VM instead (host_shim/watchdog.py)."""
        dog = watchdog.EarlyBootWatchdog.for_boot(self.meta)
        async with follow.ConsoleFollower(self.instance, self.meta.log_since,
                                          progress=self.progress,
                                          trusted=control.enabled(self.meta.argv)) as follower:
            next_observe = trio.current_time() + lifecycle.OBSERVE_EVERY
            while True:
                final = done.is_set()    # decided before reading: the read then sees everything
                batch = await follower.next(final=final, wake=done)
                if batch.first_bytes and not any(e.name == tl.FIRST_CONSOLE_BYTE
                                                 for e in self.meta.events):
                    self.events.append((tl.FIRST_CONSOLE_BYTE, lifecycle.now_ns()))
                self.show(batch)
                changed = False
                for marker in batch.markers:
                    changed |= self.on_marker(marker)
                if final:
                    return False
                dog.see(batch)
                cpu = partial(watchdog.qemu_cpu_seconds, self.meta.pid)
                if reason := dog.due(lifecycle.now_ns(), cpu):
                    if await self._relaunch(reason):
                        return True
                    dog.armed = False       # the instance moved on without us
                if changed or trio.current_time() >= next_observe:
                    next_observe = trio.current_time() + lifecycle.OBSERVE_EVERY
                    await self.observe()

    async def _relaunch(self, reason: str) -> bool:
        """End the hung boot and launch again (lifecycle.relaunch); True if it did."""
        async with self.relaunch_lock:
            boot = self.meta.boot
            self.meta = await lifecycle.relaunch(self.instance, boot, reason)
            if self.meta.boot == boot:
                return False
            self.live, self.events, self.phase = MarkerRecord(), [], console.Phase.BOOT
            self.gate = control.ConsoleGate()
            self.progress.reset()
            return True

    # -- the run --

    async def run(self, signals: Signals) -> Outcome:
        self.show_state(self.meta)
        console_done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.follow_console, console_done)
            with trio.CancelScope() as vm_scope:
                signals.scope = vm_scope
                if signals.signum is not None:
                    vm_scope.cancel()
                timeout_scope = trio.move_on_after(self.opts.timeout)
                await self._run_vm(timeout_scope)
            signals.scope = None
            self.outcome.timed_out = timeout_scope.cancelled_caught
            if self.outcome.timed_out and not self.booted.is_set():
                self.outcome.progress = self.progress.describe()
            self.outcome.signal = signals.signum
            await self.stop_vm()
            # QEMU has exited, so the log is complete: the follower drains it and returns.
            console_done.set()
        await self.observe()
        return self.outcome

    async def _run_vm(self, timeout_scope: trio.CancelScope) -> None:
        """Until QEMU exits (or `timeout_scope` ends): the helpers that end the VM run meanwhile."""
        async with trio.open_nursery() as vm_nursery:
            vm_nursery.start_soon(self._poweroff_grace)
            vm_nursery.start_soon(self._boot_deadline)
            if self.program:
                vm_nursery.start_soon(self._agent_program)
            with timeout_scope:
                while True:
                    pid = self.meta.pid
                    self.outcome.qemu_returncode = await vmm.wait_exit(pid)
                    async with self.relaunch_lock:
                        if self.meta.pid == pid:     # not ended by the early-boot watchdog
                            break
            vm_nursery.cancel_scope.cancel()

    async def _poweroff_grace(self) -> None:
        await self.finished.wait()
        if self.program:          # the agent's program ended: the guest has nothing left to do
            await self.stop_vm()
            return
        await trio.sleep(POWEROFF_GRACE)
        if self.opts.verbose:
            log.note(f"guest did not power off within {POWEROFF_GRACE:g} s; stopping QEMU")
        await self.stop_vm()

    async def _boot_deadline(self) -> None:
        """The boot must get far enough (`booted`) within --boot-timeout, else the VM is
        stopped: a hung boot never leaves `kindling run` waiting."""
        with trio.move_on_after(self.opts.boot_timeout):
            await self.booted.wait()
            return
        self.outcome.boot_timed_out = True
        self.outcome.progress = self.progress.describe()
        log.note(f"the boot deadline ({self.opts.boot_timeout:g} s) passed; stopping the VM")
        await self.stop_vm()

    async def _agent_program(self) -> None:
        """Once Running: run the program through the agent, its output streamed to ours."""
        await self.running.wait()
        try:
            async with open_agent(self.instance.agent_socket,
                                  timeout=agent_ops.CONNECT_TIMEOUT) as client:
                result = await client.exec(
                    list(self.program), cwd=self.opts.workdir,
                    stdout=lambda data: _write(1, data), stderr=lambda data: _write(2, data))
        except AgentError as e:
            self.outcome.agent_error = e.message
        else:
            if result.error:      # could not start: code 127 or 126
                log.note(f"{self.program[0]}: {result.error}")
            self.outcome.program_code = result.code
            log.note(f"exited code={result.code} ({self.elapsed():.2f} s)")
        self.finished.set()

    async def stop_vm(self) -> None:
        """QMP quit, then SIGTERM, then SIGKILL (shielded).  Never leaves QEMU behind."""
        with trio.CancelScope(shield=True):
            async with self.relaunch_lock:      # a relaunch in progress completes first
                how = await vmm.stop(self.instance, graceful=0)
            if how is not None and self.outcome.qemu_stopped is None:
                self.outcome.qemu_stopped = how
            if self.outcome.qemu_returncode is None:
                self.outcome.qemu_returncode = run_mod.reap_detached(self.meta.pid)
            self.events.append((tl.QEMU_EXITED, lifecycle.now_ns()))


def _to_devnull(fd: int) -> None:
    """`kindling run ... | head`: the reader is gone.  Keep running the VM to the end
    (its exit code still matters) and send further output nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


async def _write(fd: int, data: bytes) -> None:
    """All of `data` to fd (blocking is fine for a CLI's stdout)."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:
        _to_devnull(fd)


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
    if outcome.program_code is not None:
        return outcome.program_code
    if outcome.exit_marker is not None:
        return _exit_marker_code(outcome, instance, opts)
    if outcome.fatal_marker is not None:
        stage = outcome.fatal_marker.fields.get("stage", "?")
        error = outcome.fatal_marker.fields.get("error", "(no message)")
        die(f"guest failed in stage {stage}: {error}",
            hint=_last_lines_hint(outcome, instance, opts) if opts.verbose else None)
    if outcome.boot_timed_out:
        die(f"the guest did not finish booting within {opts.boot_timeout:g} s, the boot deadline "
            f"({outcome.progress}); the VM was stopped",
            hint="raise --boot-timeout if the guest is only slow; "
                 + _last_lines_hint(outcome, instance, opts))
    if outcome.timed_out:
        during_boot = f" (still booting: {outcome.progress})" if outcome.progress else ""
        die(f"timed out after {opts.timeout:g} s before the program finished{during_boot}; "
            "the VM was stopped",
            hint="raise --timeout; " + _last_lines_hint(outcome, instance, opts))
    if outcome.agent_error is not None:
        die(f"running the program through the agent failed: {outcome.agent_error}",
            hint=_last_lines_hint(outcome, instance, opts))
    status = outcome.qemu_returncode
    how = run_mod.describe_returncode(status) if status is not None else "stopped"
    die(f"the VM ended before the program finished (QEMU {how})",
        hint=_last_lines_hint(outcome, instance, opts))


def _exit_marker_code(outcome: Outcome, instance: Instance, opts: RunOptions) -> int:
    raw = outcome.exit_marker.fields.get("code")
    try:
        code = int(raw)
    except (TypeError, ValueError):
        die(f"the guest reported an unreadable exit code {raw!r}",
            hint=_last_lines_hint(outcome, instance, opts))
    if not 0 <= code <= 255:
        die(f"the guest reported an out-of-range exit code {code}")
    return code


def plan(opts: RunOptions) -> tuple[RunOptions, tuple[str, ...]]:
    """(the options the VM is created with, the program to run through the agent:
    () when the VM's own command is the program).  See initmode.split_run."""
    if (opts.config_json is not None or opts.config_disk is not None
            or opts.init_mode not in initmode.INIT_MODES):
        return opts, ()        # create reports what is wrong, or runs the raw config as is
    command, program = initmode.split_run(opts.command, image_command_for(opts), opts.init_mode)
    if not program:
        if initmode.is_init(command):
            die(f"nothing to run: {shlex.join(command)} is the guest's init (systemd mode), and "
                "`kindling run` runs a program in a systemd guest through the agent",
                hint="kindling run --base debian --init-mode systemd -- CMD [ARG...]; to keep "
                     "a systemd guest running, use `kindling create --base debian`")
        return opts, ()
    if opts.agent == "none":
        die("--agent none: a systemd-mode run needs the agent to run the program",
            hint="drop --agent none, or use --init-mode exec")
    return replace(opts, command=command, init_mode="systemd"), program


# --- the whole run ------------------------------------------------------------------

async def run_async(opts: RunOptions, home=None, emit=None) -> int:
    for flag, value in (("--timeout", opts.timeout), ("--boot-timeout", opts.boot_timeout)):
        if not value > 0:
            die(f"{flag} {value:g}: must be positive")
    with trio.open_signal_receiver(*SIGNALS) as receiver:
        signals = Signals(receiver)
        error = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(signals.watch)
            try:
                status = await _run(opts, home, signals, emit)
            except Exception as e:   # raised here, not as a nursery's ExceptionGroup
                error = e
            finally:
                nursery.cancel_scope.cancel()
        if error is not None:
            raise error
        return status


async def _run(opts: RunOptions, home, signals: Signals, emit=None) -> int:
    opts, program = plan(opts)
    with trio.CancelScope() as create_scope:
        signals.scope = create_scope
        instance, meta = await lifecycle.create(
            opts, home, verbose=log.note if opts.verbose else None)
    signals.scope = None
    if create_scope.cancelled_caught:      # create removed what it had made
        die(f"interrupted by {signal.Signals(signals.signum).name}",
            exit_code=128 + signals.signum)
    try:
        supervisor = Supervisor(instance, meta, opts, emit, program)
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


def run(opts: RunOptions, home=None, emit=None) -> int:
    """`emit(event, **fields)`: with run --json, states and output go there as events."""
    return trio.run(run_async, opts, home, emit)
