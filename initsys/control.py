"""The control port: every marker PID 1 prints also goes to a channel the program cannot write.

The problem (issue 15): the serial console is shared with the program, so any
line the program prints can look like `HYPEMAN-EXIT code=0 ...`, and a host
that reads the console alone cannot tell it from PID 1's own.  Kindling's host
therefore attaches a dedicated virtio-serial port named `org.kindling.control.0`
(and says so with the kernel argument `kindling_control=1`); PID 1 opens it
during the boot, before the program can run, and holds it open for the life
of the guest.  The kernel's virtio_console admits one opener per port (a
second open() gets EBUSY, even as root, even through /proc/1/fd/N), so the
program cannot write to it.  Every marker line goes to the control port first,
then to the console exactly as before: a console-only host (hypeman) sees the
same bytes as ever; a Kindling host takes its lifecycle facts from the control
port alone (host_shim/control.py) and treats a marker-shaped console line that
the control port does not vouch for as program output.

Alternatives weighed:
* PID 1 relays the program's output (a pipe instead of the console) and
  escapes marker-shaped lines: the program would lose its console (a tty,
  /dev/console's semantics), every output byte would cost PID 1 CPU, and a
  root program can still write to /dev/console or /dev/ttyS0 directly.
* A vsock or socket host end: needs a listening host process for the life of
  the VM; a guest write to a virtio-serial port blocks while no host client is
  connected (ENVIRONMENT.md).  The host end is a QEMU `file` chardev instead:
  always connected, nothing to keep running.
* What it does not stop: a root program that ptrace()s PID 1 or takes its
  descriptor with pidfd_getfd(), or loads a kernel module.  The guarantee is
  about output (a test runner, a nested log, `cat` of a serial log), not about
  a program that attacks PID 1.

Who writes what: PID 1 writes every marker it prints (stages, FATAL, EXIT,
PROGRAM-START from the forked child before exec, AGENT-READY once the agent's
readiness byte arrived, HEADERS-FAILED in systemd mode).  The headers worker
inherits the descriptor (KINDLING_CONTROL_FD) and writes its HEADERS-* lines
itself.  The descriptor is close-on-exec, so the program never inherits it.
Lines emitted before the port is open (the first stages) are kept and written
once it is, so the control channel holds the whole boot.
"""

import os
import select
import threading

NAME = "org.kindling.control.0"
FD_ENV = "KINDLING_CONTROL_FD"
PORT_TIMEOUT = 10.0
WRITE_TIMEOUT = 2.0          # a port that stays unwritable this long loses the line
MAX_BACKLOG = 512

_lock = threading.Lock()
_fd = None
_backlog = None              # lines waiting for the port (PID 1, while it is expected)


def requested(environ=os.environ):
    """The host attached the port: `kindling_control=1` on the kernel command line."""
    return environ.get("kindling_control") == "1"


def expect():
    """PID 1, at its start when requested(): keep marker lines until attach()."""
    global _backlog
    with _lock:
        if _fd is None:
            _backlog = []


def adopt_inherited(environ=os.environ):
    """A helper process (the headers worker): use the descriptor PID 1 passed it."""
    global _fd
    raw = environ.pop(FD_ENV, None)
    if raw and raw.isdigit():
        _fd = int(raw)
        try:
            os.set_inheritable(_fd, False)   # for whatever the helper runs in turn
        except OSError:
            _fd = None


def open_port(timeout=PORT_TIMEOUT):
    """PID 1: wait for the named port, open it (held until power-off) and flush the
    lines kept so far.  Raises OSError when it does not appear or cannot be opened."""
    from initsys import ports

    named = ports.named_ports()
    if NAME in named:       # usually: its name came with the agent port's
        ports.link_ports(named)
        path = f"{ports.DEV_PORTS}/{NAME}"
    else:
        path = ports.wait_for_port(NAME, timeout)
    if path is None:
        raise OSError(f"virtio-serial port {NAME} did not appear within {timeout:.0f} s"
                      " (kindling_control=1)")
    attach(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY))


def awaited():
    """PID 1 expects the port (kindling_control=1) and has not opened it yet."""
    return _backlog is not None


def attach(fd):
    global _fd, _backlog
    with _lock:
        _fd = fd
        kept, _backlog = _backlog or [], None
        for line in kept:
            _write(line)


def forget():
    """A child forked from PID 1 (initsys/zygote.py): the port and its backlog are PID 1's,
    and its lock may be held by a thread that does not exist in the child."""
    global _lock, _fd, _backlog
    _lock, _fd, _backlog = threading.Lock(), None, None


def descriptor():
    """The open control descriptor, or None (to pass to a helper)."""
    return _fd


def write(line):
    """One marker line to the control port (kept for later before the port is open)."""
    with _lock:
        if _fd is not None:
            _write(line)
        elif _backlog is not None and len(_backlog) < MAX_BACKLOG:
            _backlog.append(line)


def write_unlocked(line):
    """write() for a forked child (the program's preexec): the lock may be held by a
    thread that does not exist in the child."""
    if _fd is not None:
        _write(line)


def _write(line):
    data = (line + "\n").encode("utf-8", "backslashreplace")
    try:
        while data:
            try:
                data = data[os.write(_fd, data):]
            except BlockingIOError:
                if not select.select([], [_fd], [], WRITE_TIMEOUT)[1]:
                    return
    except OSError:
        pass  # like the console: never take PID 1 down
