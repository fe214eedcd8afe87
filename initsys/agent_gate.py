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
import time

from initsys import console, control, helpers, protocol

READY_TIMEOUT = 30.0
BASELINE_POLL_INTERVAL = 0.1  # baseline only: a naive implementation's poll interval
READY_FILE = "/run/kindling/agent.ready"  # inside the new root (its /run is a tmpfs)
SERIAL_NAME = "org.kindling.agent.0"
VSOCK_PORT = 2222
PROCESS_NAME = "kindling-agent"  # its /proc/PID/comm (the cmdline is PID 1's: it is forked)


def import_agent():
    """PID 1, before forking the agent: everything its serve() needs."""
    import agent.main  # noqa: F401


class AgentFailed(OSError):
    pass


def transport_from_cmdline(environ=os.environ):
    """`kindling_agent=serial` (Kindling's host attaches the port) or vsock (default)."""
    kind = environ.get("kindling_agent", "vsock")
    if kind == "serial":
        return {"transport": "serial", "path": f"/dev/virtio-ports/{SERIAL_NAME}"}
    return {"transport": "vsock", "port": VSOCK_PORT}


class AgentProcess:
    """The agent child: forked from PID 1 (initsys/zygote.py, initsys/agent_boot.py),
    blocked on its `go` pipe until released or cancelled once the config is known.
    Fork before trio.run(), with agent.main imported (import_agent) unless no other
    thread runs yet (the child then imports it itself)."""

    def __init__(self, reaper):
        from initsys import agent_boot, zygote

        self._ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        console = os.open("/dev/console", os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC) \
            if os.path.exists("/dev/console") else None
        fault = os.environ.get("kindling_agent_fault")  # test hook, from the kernel command line
        try:
            self.pid = zygote.fork(
                reaper, lambda: agent_boot.run(go_r, ready_w, READY_FILE, fault),
                keep_fds=(go_r, ready_w), stdout=console, stderr=console,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, name=PROCESS_NAME)
        finally:
            for fd in (ready_w, go_r, console):
                if fd is not None:
                    os.close(fd)
        self.helper = helpers.Helper("agent", None, time.monotonic(), go_w)
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
