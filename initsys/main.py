"""PID 1's boot pipeline.

Shape (after virtme-ng's init): strictly ordered basic setup, then the
program, then power-off.  Every stage prints a KINDLING-STAGE line; any
failure prints one KINDLING-FATAL line naming the stage and powers off.

Why a thread for the ordered setup.  Under TCG, Python imports are the boot
budget (ENVIRONMENT.md): `import trio` alone costs ~0.9 s of guest CPU, and
nothing before the program needs trio.  The ordered basic setup -- load the
module closure, wait for the disks, assemble the overlay root, read the
config, bind mounts -- is almost all kernel work (finit_module, mount, uevent
waits) done with the GIL released.  So it runs, in order, in one plain thread
started right after the API mounts, while the main thread imports trio; with
two vCPUs the two really overlap.  Alternatives weighed: (a) everything in
trio after the import -- simplest, but the ~0.5 s of setup then comes after
the ~0.9 s import instead of under it; (b) a separate process for the setup --
it would pay its own interpreter start (~0.2 s) and need IPC for the config.
The thread only touches the filesystem and the kernel; it hands its results
(disks, config) to trio through `OrderedSetup.join`.  The device wait stays
event-driven: the thread sleeps in poll() on the uevent socket.
"""

import gc
import signal
import threading

from initsys import console, control, kmod, mounts, power, protocol, timeline
from initsys.timeline import Stage, record

DISK_TIMEOUT = 10.0
DISK_ROLES = ("rootfs", "overlay", "config")


def describe(exc):
    """One line for a FATAL message: the innermost real error of an exception group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, (OSError, protocol.ConfigError)) and str(exc):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SetupFailed(Exception):
    def __init__(self, stage, error):
        super().__init__(describe(error))
        self.stage = stage


class OrderedSetup(threading.Thread):
    """modules -> disks -> rootfs -> config -> newroot, in order, off the main thread."""

    def __init__(self, reaper, t0, wants_serial_port=False, prestarted_network=None):
        super().__init__(name="setup", daemon=True)
        self.reaper = reaper
        self.t0 = t0
        self.prestarted_network = prestarted_network
        self.launched_network = None
        self.wants_serial_port = wants_serial_port
        self.error = None
        self.config = None
        self.strategy = None
        self.disks = None
        self.skipped_modules = []

    def run(self):
        try:
            self._run()
        except BaseException as e:  # handed to the main thread, never lost
            self.error = SetupFailed(timeline.current(), e)
        try:
            self._record_boot_start()
        except OSError:
            pass  # the timeline only

    def _run(self):
        from initsys import agent_gate, config, devices, ports, rootfs, stages

        with Stage("modules"):
            watcher = devices.BlockWatcher()  # listening before the block driver loads
            self.skipped_modules = kmod.load_all()
        with Stage("disks"):
            disks = watcher.wait_for_roles(DISK_ROLES, DISK_TIMEOUT)
            if disks is None:
                raise OSError(f"disks not found within {DISK_TIMEOUT:.0f} s: "
                              + ", ".join(watcher.missing(DISK_ROLES)))
        self.disks = disks
        if self.wants_serial_port:
            with Stage("ports"):
                if ports.wait_for_port(agent_gate.SERIAL_NAME, agent_gate.READY_TIMEOUT) is None:
                    raise OSError(f"virtio-serial port {agent_gate.SERIAL_NAME} did not appear within "
                                  f"{agent_gate.READY_TIMEOUT:.0f} s (kindling_agent=serial)")
        if control.requested():  # before the program can run: it must not get the port
            with Stage("control"):
                control.open_port()
        with Stage("rootfs"):
            rootfs.assemble(disks["rootfs"], disks["overlay"])
        with Stage("config"):
            self.config = config.load(disks["config"])
            self.strategy = stages.strategy_of(self.config)
        with Stage("newroot"):
            mounts.bind_into_newroot()
        if self.strategy == "concurrent":
            self.launched_network = stages.launch_network_early(
                self.config, self.reaper, mounts.NEWROOT, self.prestarted_network)
        elif self.prestarted_network is not None and not self.config.network_enabled:
            self.prestarted_network.cancel(self.reaper)
        else:
            self.launched_network = self.prestarted_network  # released in stage order

    def _record_boot_start(self):
        """The `kernel` and `python` stages, from the kernel log (here, off the critical path)."""
        from initsys import libc

        started = init_exec_time(libc.kernel_log())
        if started is not None and started <= self.t0:
            record("kernel", 0.0, started)
            record("python", started, self.t0)  # interpreter start-up, up to /init's first line
        else:
            record("kernel", 0.0, self.t0)


async def boot(setup, agent):
    import trio

    from initsys import agent_gate, program

    reaper = setup.reaper
    async with trio.open_nursery() as nursery:
        await nursery.start(reaper.run)
        if agent is not None:
            nursery.start_soon(agent.supervise, reaper)
        with Stage("setup-join"):
            await trio.to_thread.run_sync(setup.join)
        if setup.error is not None:
            raise setup.error
        cfg = setup.config
        if agent is None and not cfg.skip_guest_agent:
            timeline.enter("agent")
            raise OSError("the agent is disabled on the kernel command line (kindling_agent=off)"
                          " but config.json does not set skip_guest_agent")

        from initsys import stages
        launched = {"network": setup.launched_network} if setup.launched_network else {}
        await stages.run(cfg, reaper, mounts.NEWROOT, setup.strategy, launched)
        if cfg.init_mode == "systemd":  # the agent and the headers become systemd units
            from initsys import systemd_mode
            if agent is not None:
                agent.kill()
            with Stage("units"):
                switch = systemd_mode.prepare(cfg, agent_gate.transport_from_cmdline())
            nursery.cancel_scope.cancel()
            return switch

        from initsys import headers_launch
        baseline = setup.strategy == "baseline"
        worker = headers_launch.start(cfg, reaper, mounts.NEWROOT, background=not baseline)
        if worker is not None and baseline:  # the benchmarks' "before": headers first
            with Stage("headers-wait"):
                await headers_launch.wait(reaper, worker)

        if agent is not None and cfg.skip_guest_agent:
            agent.cancel()
        elif agent is not None:
            wait_ready = agent.release_and_poll if baseline else agent.release_and_wait
            with Stage("agent"):
                await wait_ready(mounts.NEWROOT, cfg.program_env(), agent_gate.transport_from_cmdline())

        timeline.enter("program")
        gc.enable()  # disabled by /init for the boot (fewer collections while importing)
        code, message = await program.run(cfg, reaper)
        console.emit_own_line(protocol.exit_line(code, message))
        nursery.cancel_scope.cancel()


def init_exec_time(kernel_log):
    """When the kernel exec'd /init: the timestamp of its "Run /init as init
    process" message (printed even with `quiet`, into the ring buffer), or None."""
    import re

    m = re.search(r"\[\s*(\d+\.\d+)\] Run /init as init process", kernel_log)
    return float(m.group(1)) if m else None


def main(t0):
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # forwarded to the program later
        if control.requested():
            control.expect()  # markers are kept until the control port is open
        with Stage("mounts"):
            mounts.mount_basic()
        import os
        agent_mode = os.environ.get("kindling_agent", "vsock")
        from initsys.reaper import Reaper
        reaper = Reaper()
        agent = None
        if agent_mode != "off":
            with Stage("agent-spawn"):
                from initsys.agent_gate import AgentProcess
                agent = AgentProcess(reaper)  # imports trio + the agent on the other vCPU meanwhile
        network = None
        if os.environ.get("kindling_net") == "1":  # the host says config.json enables it
            with Stage("network-spawn"):
                from initsys import helpers
                network = helpers.launch(reaper, "network", deferred=True)
        setup = OrderedSetup(reaper, t0, wants_serial_port=agent_mode == "serial",
                             prestarted_network=network)
        setup.start()
        with Stage("imports"):
            from initsys import deferred
            deferred.defer()  # ssl, hmac: imported by trio, never used by PID 1
            import trio
        switch = trio.run(boot, setup, agent)
        if switch is not None:  # systemd mode: exec the image's init (never returns)
            timeline.enter("systemd")
            switch.exec()
    except BaseException as e:
        while isinstance(e, BaseExceptionGroup) and e.exceptions:
            e = e.exceptions[0]
        stage = getattr(e, "stage", None)  # SetupFailed, stages.StageFailed
        if isinstance(stage, str):
            power.fatal(stage, str(e))
        power.fatal(timeline.current(), describe(e))
    power.power_off()
