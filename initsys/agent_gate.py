"""Exec mode's readiness gate: start the agent early, release it when the root
is ready, and wait for its FD handshake (PROTOCOL.md §4) before the program.

The agent writes one byte to an inherited pipe once it can serve.  PID 1 sleeps
on the read end (trio wait_readable: event-driven, no polling) with a 30 s
limit (READY_TIMEOUT: generous, since it only matters when something is wrong;
under TCG with eight guests on two host cores the agent's own start took over 10 s).  A byte counts even when the agent exits right after writing it; EOF
without a byte means the agent died first.  Either failure is fatal: the
program never runs.

The `baseline` boot strategy (the benchmarks' "before", initsys/stages.py)
deliberately detects readiness the naive way instead: it polls the ready file
every 100 ms (`release_and_poll`), with the same 30 s limit, and ignores the byte.
"""

import json
import os
import signal

from initsys import console, control, helpers, protocol

READY_TIMEOUT = 30.0
BASELINE_POLL_INTERVAL = 0.1  # baseline only: a naive implementation's poll interval
READY_FILE = "/run/kindling/agent.ready"  # inside the new root (its /run is a tmpfs)
SERIAL_NAME = "org.kindling.agent.0"
VSOCK_PORT = 2222


class AgentFailed(OSError):
    pass


def transport_from_cmdline(environ=os.environ):
    """`kindling_agent=serial` (Kindling's host attaches the port) or vsock (default)."""
    kind = environ.get("kindling_agent", "vsock")
    if kind == "serial":
        return {"transport": "serial", "path": f"/dev/virtio-ports/{SERIAL_NAME}"}
    return {"transport": "vsock", "port": VSOCK_PORT}


class AgentProcess:
    """The agent child: a deferred helper (initsys/helpers.py) spawned early, before
    trio, and released or cancelled once the config is known."""

    def __init__(self, reaper):
        self._ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        console = os.open("/dev/console", os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC) \
            if os.path.exists("/dev/console") else None
        env = {"KINDLING_READY_FD": str(ready_w), "KINDLING_READY_FILE": READY_FILE,
               "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        if os.environ.get("kindling_agent_fault"):  # test hook, from the kernel command line
            env["KINDLING_AGENT_FAULT"] = os.environ["kindling_agent_fault"]
        try:
            self.helper = helpers.launch(reaper, "agent_boot", deferred=True, env=env,
                                         pass_fds=(ready_w,), stdout=console, stderr=console,
                                         new_session=True)
        finally:
            os.close(ready_w)
            if console is not None:
                os.close(console)
        self.pid = self.helper.popen.pid
        self.announce = False      # whether PID 1 prints AGENT-READY (set on release)

    def cancel(self):
        """Not wanted: the agent exits (supervise() reaps it)."""
        self.helper.cancel()
        os.close(self._ready_r)

    def kill(self):
        """Not wanted, and not worth letting it finish its imports (systemd mode)."""
        self.cancel()
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    async def release_and_wait(self, root, env, transport, timeout=READY_TIMEOUT):
        """Send `go`, then wait for the readiness byte.  Raises AgentFailed."""
        import trio

        self._release(root, env, transport)
        byte = b""
        with trio.move_on_after(timeout):
            await trio.lowlevel.wait_readable(self._ready_r)
            byte = os.read(self._ready_r, 1)
            os.close(self._ready_r)
            if not byte:
                raise AgentFailed("the agent exited before it was ready (no readiness byte)")
            self._ready()
            return
        raise AgentFailed(f"the agent was not ready within {timeout:.0f} s")

    async def release_and_poll(self, root, env, transport, timeout=READY_TIMEOUT,
                               interval=BASELINE_POLL_INTERVAL):
        """The baseline strategy's DELIBERATELY NAIVE gate, kept only as the benchmarks'
        "before": send `go`, then poll for the ready file in the new root every
        `interval` seconds (the byte is never read).  Raises AgentFailed on timeout."""
        import trio

        self._release(root, env, transport)
        path = os.path.join(root, READY_FILE.lstrip("/"))
        with trio.move_on_after(timeout):
            while not os.path.exists(path):
                await trio.sleep(interval)
            # closed only now: the agent writes its byte before the file, and an early
            # close would make that write fail with EPIPE
            os.close(self._ready_r)
            self._ready()
            return
        raise AgentFailed(f"the agent's ready file {READY_FILE} did not appear within {timeout:.0f} s")

    def _release(self, root, env, transport):
        # With the control port open, PID 1 prints AGENT-READY itself once it knows
        # (initsys/control.py): the agent never holds the port.
        self.announce = control.descriptor() is not None
        self.helper.release(json.dumps({"root": root, "env": env, "transport": transport,
                                        "announce": not self.announce}).encode())

    def _ready(self):
        if self.announce:
            console.emit(protocol.agent_ready_line())

    async def supervise(self, reaper):
        """Reap the agent when it exits (it is tracked, so nobody else will)."""
        import trio

        pidfd = os.pidfd_open(self.pid)
        try:
            await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        reaper.untrack(self.pid)
        reaper.sweep()
