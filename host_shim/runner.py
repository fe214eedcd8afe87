"""`kindling run`: build what is missing, boot one microVM, show the program, pass its exit on.

The steps, in order:

1. check the inputs and the host (paths exist, QEMU installed, accelerator)
   and make config.json (validated) before anything slow happens;
2. create the instance directory and get the kernel/initrd/rootfs into it
   from the image builder (which caches them);
3. make the instance's overlay and config disks;
4. launch QEMU and supervise it (`Supervisor`): follow the console, show
   program output, print state transitions, stop QEMU on timeout or signal;
5. print the boot timeline, remove the instance directory (unless --keep),
   and exit with the program's exit code.
"""

import json
import os
import signal
import sys
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from initsys import protocol
from initsys.protocol import Marker

from . import accel as accel_mod
from . import console, log, qemu, qmp
from . import run as run_mod
from .errors import die
from .instance import Instance, cache_dir
from .state import State, running_guest_state
from .timeline import (EXIT_SEEN, FATAL_SEEN, FIRST_CONSOLE_BYTE, LAUNCH, PROGRAM_START_SEEN,
                       QEMU_EXITED, Timeline, format_timeline)

DEFAULT_TIMEOUT = 120.0
DEFAULT_OVERLAY_SIZE = 256 << 20

# After HYPEMAN-EXIT the guest powers off by itself; give it this long before stopping QEMU.
POWEROFF_GRACE = 10.0
# Stopping QEMU: QMP `quit`, then SIGTERM, then SIGKILL, each waited for this long.
QMP_QUIT_TIMEOUT = 2.0
TERM_GRACE = 3.0
# Console lines kept for error messages.
LAST_LINES = 20


@dataclass(frozen=True)
class RunOptions:
    command: tuple[str, ...] = ()
    rootfs: Path | None = None
    kernel: Path | None = None
    modules: Path | None = None
    memory_mib: int = qemu.DEFAULT_MEMORY_MIB
    cpus: int = qemu.DEFAULT_CPUS
    env: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None
    accel: str = accel_mod.Accel.AUTO.value
    timeout: float = DEFAULT_TIMEOUT
    keep: bool = False
    verbose: bool = False
    config_json: Path | None = None     # test hook: raw config.json, not validated
    config_disk: Path | None = None     # test hook: a ready-made config disk image
    overlay_size: int = DEFAULT_OVERLAY_SIZE


# --- 1. inputs ---------------------------------------------------------------

def parse_env(items: list[str] | tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            die(f"invalid --env {item!r}", hint="use --env NAME=VALUE")
        pairs.append((key, value))
    return tuple(pairs)


def check_inputs(opts: RunOptions) -> None:
    for flag, path in (("--rootfs", opts.rootfs), ("--kernel", opts.kernel),
                       ("--modules", opts.modules), ("--config-json", opts.config_json),
                       ("--config-disk", opts.config_disk)):
        if path is not None and not os.path.exists(path):
            die(f"{flag}: {path} does not exist")
    if opts.modules is not None and not os.path.isdir(opts.modules):
        die(f"--modules: {opts.modules} is not a directory")
    if opts.modules is not None and opts.kernel is None:
        die("--modules needs --kernel", hint="pass the kernel the modules were built for")
    if opts.memory_mib < 64:
        die(f"--memory {opts.memory_mib}: at least 64 MiB is needed")
    if opts.cpus < 1:
        die(f"--cpus {opts.cpus}: at least 1 is needed")
    if not opts.timeout > 0:
        die(f"--timeout {opts.timeout:g}: must be positive")
    hooks = [flag for flag, value in (("--config-json", opts.config_json),
                                      ("--config-disk", opts.config_disk)) if value is not None]
    if len(hooks) > 1:
        die("--config-json and --config-disk cannot be used together")
    if hooks and (opts.command or opts.env or opts.workdir):
        die(f"{hooks[0]} replaces the generated config.json: give no command, --env or --workdir")
    if not opts.command and not hooks:
        die("no command given", hint="kindling run [OPTIONS] -- CMD [ARG...]")


# --- 2. config and artifacts -------------------------------------------------

def make_config(opts: RunOptions) -> dict:
    """config.json (PROTOCOL.md §2) for the command, validated as the guest will."""
    config = {
        "entrypoint": list(opts.command[:1]),
        "cmd": list(opts.command[1:]),
        "env": dict(opts.env),
        "workdir": opts.workdir or "/",
        "skip_guest_agent": True,      # no agent yet
        "skip_kernel_headers": True,   # no headers worker yet
    }
    try:
        protocol.validate_config(config)
    except protocol.ConfigError as e:
        die(f"invalid run configuration: {e}")
    return config


def agent_skipped(config: dict | bytes | None) -> bool:
    """Whether `Running` needs only PROGRAM-START.  A config we cannot read counts as
    skipped: there is no agent yet that could ever report ready."""
    if isinstance(config, bytes):
        try:
            config = json.loads(config)
        except ValueError:
            return True
    if isinstance(config, dict):
        return config.get("skip_guest_agent", False) is True
    return True


def build_artifacts(opts: RunOptions, out_dir: Path):
    """Kernel, initrd and rootfs from the image builder (cached there), copied to `out_dir`.

    `out_dir` is per instance: a shared one would let two concurrent runs with
    different inputs swap each other's images between build and boot.
    """
    try:
        from image_build.build import BuildOptions, build_all
        from image_build.errors import BuildError
    except ImportError as e:
        die(f"the image builder is not available: {e}",
            hint="image_build.build (build_all, BuildOptions) is missing from this installation")
    try:
        return build_all(BuildOptions(out_dir=out_dir, cache_dir=cache_dir(), rootfs=opts.rootfs,
                                      kernel=opts.kernel, modules=opts.modules))
    except BuildError as e:
        die(f"building the VM image failed: {e}")


# --- 3. instance -------------------------------------------------------------

def _make_raw_config_disk(data: bytes, path: Path) -> None:
    """A config disk holding exactly `data` as /config.json (the --config-json test hook).

    TODO: use image_build.disks.make_config_disk once it accepts raw bytes; it
    only takes a dict (and re-serialises it), so this goes through make_ext4.
    """
    import tempfile

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


def make_disks(instance: Instance, artifacts, config: dict | bytes | None,
               opts: RunOptions) -> tuple[qemu.Disk, ...]:
    """rootfs, overlay, config: the order and serials of PROTOCOL.md §1."""
    from image_build import disks
    from image_build.errors import BuildError
    try:
        disks.make_overlay_disk(instance.overlay_img, opts.overlay_size)
        if opts.config_disk is not None:
            config_img = Path(opts.config_disk)
        else:
            if isinstance(config, bytes):
                _make_raw_config_disk(config, instance.config_img)
            else:
                disks.make_config_disk(config, instance.config_img)
            config_img = instance.config_img
    except BuildError as e:
        die(f"making the instance disks failed: {e}")
    return (
        qemu.Disk(os.fspath(artifacts.rootfs), "rootfs", readonly=True),
        qemu.Disk(os.fspath(instance.overlay_img), "overlay", scratch=True),
        qemu.Disk(os.fspath(Path(config_img).absolute()), "config", readonly=True),
    )


# --- 4. supervision ----------------------------------------------------------

@dataclass
class Outcome:
    """What happened to the VM, for the final report."""
    exit_marker: Marker | None = None
    fatal_marker: Marker | None = None
    qemu_returncode: int | None = None
    timed_out: bool = False
    signal: int | None = None
    last_lines: deque = field(default_factory=lambda: deque(maxlen=LAST_LINES))
    timeline: Timeline = field(default_factory=Timeline)


class Supervisor:
    """Runs QEMU and turns its console into output, states and an Outcome."""

    def __init__(self, argv: list[str], instance: Instance, opts: RunOptions,
                 agent_skipped: bool):
        self.argv = argv
        self.instance = instance
        self.opts = opts
        self.agent_skipped = agent_skipped
        self.outcome = Outcome()
        self.phase = console.Phase.BOOT
        self.state: State | None = None
        self.program_started = False
        self.agent_ready = False
        self.finished = trio.Event()   # EXIT or FATAL seen
        self._t0 = 0.0

    # -- time and state --

    def elapsed(self) -> float:
        return trio.current_time() - self._t0

    def _mark(self, event: str) -> None:
        self.outcome.timeline.mark(event, self.elapsed())

    def _set_state(self, state: State) -> None:
        if state != self.state:
            self.state = state
            log.note(f"{state} ({self.elapsed():.2f} s)")

    # -- console --

    def on_data(self) -> None:
        self._mark(FIRST_CONSOLE_BYTE)

    def on_line(self, line: str) -> None:
        self.outcome.last_lines.append(line)
        item = console.classify(line, self.phase)
        self.phase = item.phase
        if item.stream is console.Stream.PROGRAM:
            self._show(sys.stdout, item.text)
        elif item.stream is console.Stream.BOOT and self.opts.verbose:
            self._show(sys.stderr, item.text)
        if item.marker is not None:
            self.on_marker(item.marker)

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

    def on_marker(self, marker: Marker) -> None:
        kind = marker.kind
        if kind == protocol.STAGE:
            self.outcome.timeline.add_marker(marker)
        elif kind == protocol.PROGRAM_START:
            self.program_started = True
            self._mark(PROGRAM_START_SEEN)
        elif kind == protocol.AGENT_READY:
            self.agent_ready = True
        elif kind == protocol.EXIT and self.outcome.exit_marker is None:
            self.outcome.exit_marker = marker
            self._mark(EXIT_SEEN)
            code = marker.fields.get("code", "?")
            message = marker.fields.get("message", "")
            log.note(f"exited code={code} {protocol.go_quote(message)} ({self.elapsed():.2f} s)")
            self.finished.set()
        elif kind == protocol.FATAL and self.outcome.fatal_marker is None:
            self.outcome.fatal_marker = marker
            self._mark(FATAL_SEEN)
            self.finished.set()
        if self.outcome.exit_marker is None and self.outcome.fatal_marker is None:
            self._set_state(running_guest_state(self.program_started, self.agent_ready,
                                                self.agent_skipped))

    # -- the run --

    async def run(self) -> Outcome:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            with open(self.instance.vmm_log, "ab") as vmm_log:
                self._t0 = trio.current_time()
                self._mark(LAUNCH)
                process = await run_mod.start(self.argv, stderr=vmm_log, start_new_session=True)
            try:
                self._set_state(State.INITIALIZING)
                await self._supervise(process, signals)
            finally:
                await self._stop(process)
        return self.outcome

    async def _supervise(self, process: trio.Process, signals) -> None:
        console_done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(console.follow, self.instance.app_log, self.on_line,
                                       done=console_done, on_data=self.on_data))
            async with trio.open_nursery() as vm_nursery:
                vm_nursery.start_soon(self._watch_signals, signals, vm_nursery.cancel_scope)
                vm_nursery.start_soon(self._poweroff_grace, process)
                with trio.move_on_after(self.opts.timeout) as timeout_scope:
                    await process.wait()
                vm_nursery.cancel_scope.cancel()
            self.outcome.timed_out = timeout_scope.cancelled_caught
            await self._stop(process)
            self._mark(QEMU_EXITED)
            self.outcome.qemu_returncode = process.returncode
            # QEMU has exited, so the log is complete: the follower drains it and returns.
            console_done.set()

    async def _watch_signals(self, signals, scope: trio.CancelScope) -> None:
        async for signum in signals:
            if self.outcome.signal is None:
                self.outcome.signal = signum
                log.note(f"{signal.Signals(signum).name} received; stopping the VM")
                scope.cancel()

    async def _poweroff_grace(self, process: trio.Process) -> None:
        await self.finished.wait()
        await trio.sleep(POWEROFF_GRACE)
        if self.opts.verbose:
            log.note(f"guest did not power off within {POWEROFF_GRACE:g} s; stopping QEMU")
        await self._stop(process)

    async def _stop(self, process: trio.Process) -> None:
        """QMP quit, then SIGTERM, then SIGKILL.  Never leaves QEMU behind."""
        with trio.CancelScope(shield=True):
            if process.returncode is not None:
                return
            with trio.move_on_after(QMP_QUIT_TIMEOUT):
                if await qmp.quit(self.instance.qmp_socket):
                    await process.wait()
                    return
            await run_mod.stop(process, grace=TERM_GRACE)


# --- 5. report ---------------------------------------------------------------

def _tail(path: Path, lines: int = 10) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def _last_lines_hint(outcome: Outcome, instance: Instance, opts: RunOptions) -> str:
    parts = []
    if outcome.last_lines:
        parts.append("last console lines:\n" + "\n".join(f"  {l}" for l in outcome.last_lines))
    else:
        parts.append("the guest printed nothing on its console")
    vmm = _tail(instance.vmm_log)
    if vmm:
        parts.append("QEMU said:\n" + "\n".join(f"  {l}" for l in vmm))
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


# --- the whole run -----------------------------------------------------------

def run(opts: RunOptions) -> int:
    check_inputs(opts)
    if opts.config_json is not None:
        try:
            config: dict | bytes | None = Path(opts.config_json).read_bytes()
        except OSError as e:
            die(f"--config-json: cannot read {opts.config_json}: {e.strerror}")
    elif opts.config_disk is not None:
        config = None
    else:
        config = make_config(opts)
    binary = qemu.find_qemu()
    accel = accel_mod.resolve(opts.accel)
    instance = Instance.create()
    try:
        artifacts = build_artifacts(opts, instance.dir / "images")
        spec = qemu.VMSpec(
            kernel=os.fspath(artifacts.kernel),
            initrd=os.fspath(artifacts.initrd),
            disks=make_disks(instance, artifacts, config, opts),
            console_log=os.fspath(instance.app_log),
            qmp_socket=os.fspath(instance.qmp_socket),
            accel=accel,
            memory_mib=opts.memory_mib,
            cpus=opts.cpus,
            name=f"kindling-{instance.id}",
        )
        argv = qemu.build_argv(spec, binary)
        if opts.verbose:
            log.note(f"instance {instance.dir}")
            log.note(f"running: {run_mod.format_command(argv)}")
        supervisor = Supervisor(argv, instance, opts, agent_skipped(config))
        outcome = trio.run(supervisor.run)
        report = format_timeline(outcome.timeline)
        if report:
            print(report, file=sys.stderr, flush=True)
        return exit_status(outcome, instance, opts)
    finally:
        if opts.keep:
            log.note(f"instance kept: {instance.dir}")
        else:
            instance.remove()
