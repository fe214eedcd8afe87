"""Exec mode's readiness gate: start the agent early, release it when the root
is ready, and wait for its FD handshake (PROTOCOL.md §4) before the program.

The agent writes one byte to an inherited pipe once it can serve.  PID 1 sleeps
on the read end (trio wait_readable: event-driven, no polling) with a 10 s
limit.  A byte counts even when the agent exits right after writing it; EOF
without a byte means the agent died first.  Either failure is fatal: the
program never runs.
"""

import json
import os
import subprocess

from initsys import helpers

READY_TIMEOUT = 10.0
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
    """The agent child: spawned early (before trio), released or cancelled later."""

    def __init__(self):
        go_r, self._go_w = os.pipe2(os.O_CLOEXEC)
        self._ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        console = os.open("/dev/console", os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC) \
            if os.path.exists("/dev/console") else None
        env = {"KINDLING_READY_FD": str(ready_w), "KINDLING_READY_FILE": READY_FILE,
               "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        if os.environ.get("kindling_agent_fault"):  # test hook, from the kernel command line
            env["KINDLING_AGENT_FAULT"] = os.environ["kindling_agent_fault"]
        try:
            self.popen = subprocess.Popen(
                helpers.helper_argv("agent_boot", str(go_r)), env=env, pass_fds=(go_r, ready_w),
                stdin=subprocess.DEVNULL, stdout=console, stderr=console, start_new_session=True)
        finally:
            os.close(go_r)
            os.close(ready_w)
            if console is not None:
                os.close(console)
        self.pid = self.popen.pid

    def cancel(self):
        """Not wanted: close `go` unwritten; the agent exits."""
        if self._go_w is not None:
            os.close(self._go_w)
            self._go_w = None
        os.close(self._ready_r)

    async def release_and_wait(self, root, env, transport, timeout=READY_TIMEOUT):
        """Send `go`, then wait for the readiness byte.  Raises AgentFailed."""
        import trio

        data = json.dumps({"root": root, "env": env, "transport": transport}).encode()
        try:
            os.write(self._go_w, data)  # a few hundred bytes: fits the pipe buffer
        except BrokenPipeError:
            raise AgentFailed("the agent exited before it was released") from None
        finally:
            os.close(self._go_w)
            self._go_w = None
        byte = b""
        with trio.move_on_after(timeout):
            await trio.lowlevel.wait_readable(self._ready_r)
            byte = os.read(self._ready_r, 1)
            os.close(self._ready_r)
            if not byte:
                raise AgentFailed("the agent exited before it was ready (no readiness byte)")
            return
        raise AgentFailed(f"the agent was not ready within {timeout:.0f} s")

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
