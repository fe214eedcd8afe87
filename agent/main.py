"""Entry point of the in-VM agent.

    python3 -m agent.main --transport serial|vsock|unix [--path P] [--port N] [--chroot DIR]

or, from a Python process that already imported trio (e.g. a child forked
from PID 1):

    import agent.main
    agent.main.serve({"transport": "serial"}, ready_fd=fd, chroot="/newroot")

Importing this module imports everything serve() will ever need, so serve()
may run after a chroot into a root that holds no Python at all: nothing is
imported lazily once it has started (tests/test_agent_main.py holds it to
that).  Order: open the transport (device, socket) -> chroot -> listen ->
ready: one byte to the ready fd (then closed), the ready file (an RFC 3339
timestamp), and HYPEMAN-AGENT-READY on stdout.  SIGTERM, SIGINT and a
`shutdown` request stop it; every running command's process group is killed.
"""

import os
import signal
import sys
import time

import trio

from agent import server, transports
from initsys import control, protocol

USAGE = ("usage: python3 -m agent.main --transport serial|vsock|unix [--path PATH] [--port PORT]"
         " [--chroot DIR] [--control PORT_DEVICE]\n"
         "  serial: --path defaults to " + transports.SERIAL_PATH + "\n"
         "  vsock:  --port defaults to " + str(transports.VSOCK_PORT) + "\n"
         "  unix:   --path is the socket to listen on (required)\n"
         "environment: KINDLING_READY_FD (fd to write one byte to once serving),"
         " KINDLING_READY_FILE (file to write the ready timestamp to)\n")


# Set for us by systemd and by kindling-agent.service (systemd mode), meaningless to the commands.
SERVICE_ONLY_ENV = ("KINDLING_AGENT_ARGS", "INVOCATION_ID", "JOURNAL_STREAM", "SYSTEMD_EXEC_PID")


class UsageError(Exception):
    pass


def parse_args(argv):
    opts = {"transport": None, "path": None, "port": None, "chroot": None, "control": None}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            raise UsageError("")
        name, eq, value = arg.partition("=")
        key = name[2:] if name.startswith("--") else None
        if key not in opts:
            raise UsageError(f"unknown argument {arg!r}")
        if not eq:
            i += 1
            if i >= len(argv):
                raise UsageError(f"{name} needs a value")
            value = argv[i]
        opts[key] = value
        i += 1
    if opts["transport"] is None:
        raise UsageError("--transport is required")
    if opts["port"] is not None:
        if not opts["port"].isdigit() or not 0 < int(opts["port"]) < 1 << 32:
            raise UsageError(f"--port {opts['port']!r}: expected a port number")
        opts["port"] = int(opts["port"])
    return opts


def write_ready_file(path, ns=None):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(protocol.format_ts(ns) + "\n")
    os.replace(tmp, path)


def report_ready(ready_fd, ready_file, announce=True):
    """The readiness handshake (PROTOCOL.md section 4): byte, file, sentinel line.
    Not `announce`: PID 1 prints the line itself on the byte (initsys/control.py)."""
    ns = time.time_ns()     # one timestamp for the file and the line
    if ready_fd is not None:
        try:
            os.write(ready_fd, b"R")
        finally:
            os.close(ready_fd)
    if ready_file:
        try:
            write_ready_file(ready_file, ns)
        except OSError as e:    # the byte is out: serving matters more than the file
            server.log(f"cannot write the ready file {ready_file}: {e.strerror or e}")
    if announce:
        line = protocol.agent_ready_line(ns)
        control.write(line)     # systemd mode: the control port it opened (--control)
        os.write(1, (line + "\n").encode())


async def _main(transport, agent, ready_fd, ready_file, announce):
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, transport, agent)
        report_ready(ready_fd, ready_file, announce)

        async def stop_on_signals():
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    agent.stopping.set()
                    return

        nursery.start_soon(stop_on_signals)
        await agent.stopping.wait()
        nursery.cancel_scope.cancel()


def serve(transport_args, ready_fd=None, *, ready_file=None, chroot=None, base_env=None,
          announce=True):
    """Open the transport, chroot, serve until shutdown.  Returns an exit status.

    transport_args: {"transport": "serial"|"vsock"|"unix", "path": ..., "port": ...}.
    ready_fd: an inherited fd to write one byte to (and close) once serving.
    ready_file: path (inside the chroot) for the ready timestamp.
    base_env: the commands' base environment (default: ours, minus KINDLING_READY_*).
    announce: print HYPEMAN-AGENT-READY (False when PID 1 prints it on the byte).
    """
    if trio.lowlevel.in_trio_run():
        # A child forked inside trio.run() shares the parent's epoll and wakeup fds.
        raise RuntimeError("agent.main.serve() called inside trio.run() (or in a child forked from"
                           " a running trio loop): fork before trio.run(), or start a fresh interpreter")
    try:
        transport = transports.make_transport(
            transport_args.get("transport"), transport_args.get("path"), transport_args.get("port"))
        transport.open()
    except transports.TransportError as e:
        server.log(f"cannot serve: {e}")
        return 1
    if chroot:
        try:
            os.chroot(chroot)
            os.chdir("/")
        except OSError as e:
            server.log(f"cannot serve: chroot {chroot}: {e.strerror}")
            return 1
    agent = server.Agent(base_env)
    try:
        trio.run(_main, transport, agent, ready_fd, ready_file, announce)
    finally:
        transport.close()
    return 0


def open_control(path):
    """systemd mode: hold the control port (initsys/control.py) for the agent's life and
    write AGENT-READY to it.  Without it the line goes to the console only."""
    try:
        control.attach(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY))
    except OSError as e:
        server.log(f"cannot open the control port {path}: {e.strerror or e}")


def ready_fd_from_env():
    """KINDLING_READY_FD, checked and removed from the environment (None when unset)."""
    raw = os.environ.pop("KINDLING_READY_FD", None)
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise UsageError(f"KINDLING_READY_FD={raw!r}: expected a file descriptor number")
    fd = int(raw)
    try:
        os.fstat(fd)
    except OSError:
        raise UsageError(f"KINDLING_READY_FD={fd}: not an open file descriptor") from None
    return fd


def main(argv=None):
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
        ready_fd = ready_fd_from_env()
    except UsageError as e:
        if str(e):
            os.write(2, f"kindling-agent: {e}\n".encode())
        os.write(2, USAGE.encode())
        return 2 if str(e) else 0
    ready_file = os.environ.pop("KINDLING_READY_FILE", None) or None
    if opts["control"]:
        open_control(opts["control"])
    for name in SERVICE_ONLY_ENV:
        os.environ.pop(name, None)  # the commands get the config's env, not the unit's plumbing
    return serve(opts, ready_fd, ready_file=ready_file, chroot=opts["chroot"])


_ready_fd_from_env = ready_fd_from_env     # the name initsys/agent_boot.py uses


if __name__ == "__main__":
    sys.exit(main())
