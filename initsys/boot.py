"""What each boot step does, and the state the steps share.

The order of the steps, and where each runs, is initsys/main.py's `steps()`;
this module only says what each one does.  Steps in the setup thread import
their modules when they run, so those imports overlap PID 1's `import trio`
(initsys/steps.py says why); nothing here imports trio before that.
"""

import os

from initsys import kmod, mounts

DISK_TIMEOUT = 10.0
DISK_ROLES = ("rootfs", "overlay", "config")
CLONE_DISK_ROLES = ("rootfs", "overlay")   # its config came on the resume line


class Boot:
    def __init__(self, t0, environ=os.environ):
        from initsys.reaper import Reaper

        self.t0 = t0
        self.environ = environ
        self.agent_mode = environ.get("kindling_agent", "vsock")
        self.reaper = Reaper()
        self.network = None     # the NetworkHelper (its module imports subprocess: not before it is needed)
        self.agent = None       # the AgentProcess, after agent-spawn
        self.setup = None       # the setup thread (initsys/steps.py)
        self.cfg = None         # after config
        self.strategy = None    # after config
        self.switch = None      # systemd mode, after units
        self._disks = None
        self._watcher = None
        self._unbound = ()      # a template's block devices, bound by each clone (initsys/checkpoint.py)
        self._headers = None
        self._resumed_config = None   # a clone's config.json, from the resume line
        self._init_exec = None        # (when the kernel exec'd /init,): read before a checkpoint

    # -- conditions of steps (evaluated when the step comes) --
    def agent_on(self):
        return self.agent_mode != "off"

    def agent_forks_early(self):
        """Measurement switch (issue 14): `kindling_agent_fork=early` forks the agent
        before PID 1's imports (it imports alone); by default it forks after them."""
        return self.agent_on() and self.environ.get("kindling_agent_fork") == "early"

    def agent_forks_late(self):
        return self.agent_on() and not self.agent_forks_early()

    def agent_on_serial(self):
        return self.agent_mode == "serial"

    def control_requested(self):
        """The host attached the control port (kernel argument kindling_control=1)."""
        from initsys import control
        return control.requested()

    def checkpointing(self):
        """A template's boot: stop at the checkpoint (kindling_checkpoint=1, initsys/checkpoint.py)."""
        from initsys import checkpoint
        return checkpoint.requested(self.environ)

    def cold(self):
        return not self.checkpointing()

    def network_hinted(self):
        """The host's prestart hint, kernel argument kindling_net=1 (initsys/network_helper.py)."""
        return self.environ.get("kindling_net") == "1"

    def systemd_mode(self):
        return self.cfg.init_mode == "systemd"

    def exec_mode(self):
        return self.cfg.init_mode == "exec"

    def baseline(self):
        return self.strategy == "baseline"

    def agent_gates_program(self):
        return self.exec_mode() and self.agent is not None and not self.cfg.skip_guest_agent

    # -- main thread, before trio --
    def expect_control(self):
        if self.control_requested():
            from initsys import control
            control.expect()

    def import_trio(self):
        from initsys import deferred
        deferred.defer()  # ssl, hmac: imported by trio, never used by PID 1
        import trio  # noqa: F401
        if self.agent_forks_late():
            from initsys import agent_gate
            agent_gate.import_agent()  # shared with the agent forked next

    def spawn_agent(self):
        from initsys.agent_gate import AgentProcess
        self.agent = AgentProcess(self.reaper)  # forked from PID 1 (initsys/zygote.py)

    def _network_helper(self):
        if self.network is None:
            from initsys.network_helper import NetworkHelper
            self.network = NetworkHelper(self.reaper, mounts.NEWROOT)
        return self.network

    def prestart_network(self):
        self._network_helper().prestart()

    # -- the setup thread --
    def load_modules(self):
        """The module closure; a clone's only binds the block driver to its disks (the
        closure was loaded before its template's checkpoint, and the block watcher made)."""
        if self.checkpointing():
            from initsys import checkpoint
            checkpoint.bind_disks(self._unbound)
            return
        from initsys import preload, timeline
        loaded = preload.join()        # started by /init (initsys/preload.py)
        if loaded is None:
            kmod.load_all()
        else:
            timeline.ran_elsewhere(*loaded)
        # the disks present were probed as it loaded: wait_for_disks lists them

    def load_modules_but_disks(self):
        """The checkpoint's `modules`: the closure, the block driver bound to no disk."""
        from initsys import checkpoint, devices
        self._watcher = devices.BlockWatcher()  # listening before the block driver binds
        self._unbound = checkpoint.load_modules_unbound()

    def prestart_setup_thread(self):
        """A template's boot: the setup thread, started now, waits for its steps."""
        from initsys.steps import SetupThread
        self.setup = SetupThread()
        self.setup.start()

    async def checkpoint(self):
        """Inside trio (started before the checkpoint, initsys/steps.py); the wait is in
        trio's worker thread, which a clone's `setup-join` then finds already started."""
        import trio
        from initsys import checkpoint
        checkpoint.import_after_resume()
        self._init_exec = (self._read_init_exec(),)   # the template's boot: every clone's kernel
        self._resumed_config = await trio.to_thread.run_sync(checkpoint.wait_and_resume)

    def read_resumed_config(self):
        """A clone's config.json, given on the resume line (initsys/checkpoint.py says why)."""
        from initsys import protocol
        self._settle_config(protocol.parse_config(self._resumed_config))

    def wait_for_disks(self):
        from initsys import devices
        roles = DISK_ROLES if self.cold() else CLONE_DISK_ROLES
        self._disks = devices.wait_for_roles(roles, DISK_TIMEOUT, self._watcher)

    def wait_for_agent_port(self):
        from initsys import agent_gate, ports
        if ports.wait_for_port(agent_gate.SERIAL_NAME, agent_gate.READY_TIMEOUT) is None:
            raise OSError(f"virtio-serial port {agent_gate.SERIAL_NAME} did not appear within "
                          f"{agent_gate.READY_TIMEOUT:.0f} s (kindling_agent=serial)")

    def open_control(self):
        from initsys import control
        control.open_port()

    def assemble_root(self):
        from initsys import rootfs
        rootfs.assemble(self._disks["rootfs"], self._disks["overlay"])

    def read_config(self):
        """Read config.json and settle what it decides at once: the strategy and the agent."""
        from initsys import config
        self._settle_config(config.load(self._disks["config"]))

    def _settle_config(self, cfg):
        from initsys import config, stages
        self.cfg = cfg
        config.warn(self.cfg)
        self.strategy = stages.strategy_of(self.cfg, self.environ)
        if not self.agent_on() and not self.cfg.skip_guest_agent:
            raise OSError("the agent is disabled on the kernel command line (kindling_agent=off)"
                          " but config.json does not set skip_guest_agent")

    def settle_agent(self):
        """The config and the forked agent are both known (after setup-join): let it go
        if it is not wanted.  It only waits on its `go` pipe until then."""
        if self.agent is not None and self.systemd_mode():
            self.agent.kill()    # systemd starts its own from the unit
        elif self.agent is not None and self.cfg.skip_guest_agent:
            self.agent.cancel()  # not wanted: it exits

    def settle_network(self):
        from initsys import stages
        self._network_helper().settle(self.cfg, launch_now=stages.network_starts_early(self.cfg, self.strategy))

    @staticmethod
    def _read_init_exec():
        from initsys import libc
        return init_exec_time(libc.kernel_log())

    def time_kernel_and_python(self):
        """The `kernel` and `python` stages, from the kernel log (here, off a cold boot's
        critical path; a clone's -- on it -- uses what its template read before the
        checkpoint: the 1 MiB log buffer and its search cost ~0.1 s after a restore)."""
        from initsys.timeline import Stage

        (started,) = self._init_exec or (self._read_init_exec(),)
        if started is not None and started <= self.t0:
            Stage("kernel", start=0.0).finish(started)
            Stage("python", start=started).finish(self.t0)  # interpreter start-up, to /init's first line
        else:
            Stage("kernel", start=0.0).finish(self.t0)

    # -- trio --
    async def start_background(self, nursery):
        """What runs beside the steps for the whole trio part: the reaper, the agent's reaping."""
        await nursery.start(self.reaper.run)
        if self.agent is not None:
            nursery.start_soon(self.agent.supervise, self.reaper)

    async def join_setup(self):
        import trio
        await trio.to_thread.run_sync(self.setup.join)
        if self.setup.error is not None:
            raise self.setup.error
        self.settle_agent()

    async def volumes_and_network(self):
        from initsys import stages
        await stages.run(self.cfg, mounts.NEWROOT, self.network, self.strategy)

    async def install_units(self):
        from initsys import agent_gate, systemd_mode
        self.switch = systemd_mode.prepare(self.cfg, agent_gate.transport_from_cmdline(self.environ))

    def headers_wanted(self):
        """Exec mode, and config.json does not skip the kernel headers."""
        from initsys import headers_launch
        return self.exec_mode() and headers_launch.wanted(self.cfg)

    def headers_before_program(self):
        """baseline: the headers installed (and waited for) before the program."""
        return self.headers_wanted() and self.baseline()

    def headers_after_program(self):
        """By default the worker starts once the program has: it never delays Running."""
        return self.headers_wanted() and not self.baseline()

    async def spawn_headers(self):
        from initsys import headers_launch
        self._headers = headers_launch.start(self.cfg, self.reaper, mounts.NEWROOT,
                                             background=not self.baseline())

    def headers_awaited(self):
        return self._headers is not None and self.baseline()

    async def wait_for_headers(self):
        from initsys import headers_launch
        await headers_launch.wait(self.reaper, self._headers)

    async def wait_for_agent(self):
        from initsys import agent_gate
        wait_ready = self.agent.release_and_poll if self.baseline() else self.agent.release_and_wait
        await wait_ready(mounts.NEWROOT, self.cfg.program_env(), agent_gate.transport_from_cmdline(self.environ))

    async def run_program(self):
        """The program, with the headers worker launched right after PROGRAM-START."""
        import gc

        from initsys import console, headers_launch, program, protocol
        from initsys.timeline import Stage
        gc.enable()  # disabled by /init for the boot (fewer collections while importing)
        after_start = None
        if self.headers_after_program():
            headers_launch.mark_pending(mounts.NEWROOT)   # what the program may read first

            async def after_start():
                with Stage("headers-spawn"):
                    await self.spawn_headers()
        code, message = await program.run(self.cfg, self.reaper, after_start)
        console.emit_own_line(protocol.exit_line(code, message))

    # -- main thread, after trio --
    def switch_root(self):
        self.switch.exec()  # never returns


def init_exec_time(kernel_log):
    """When the kernel exec'd /init: the timestamp of its "Run /init as init
    process" message (printed even with `quiet`, into the ring buffer), or None."""
    import re

    m = re.search(r"\[\s*(\d+\.\d+)\] Run /init as init process", kernel_log)
    return float(m.group(1)) if m else None
