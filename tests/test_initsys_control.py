"""initsys/control.py and console.emit without a VM: marker lines to the control port
first, lines kept until the port is open, never blocking PID 1.  (The port itself,
its EBUSY for a second opener and the host's view: tests/test_vm_control.py.)"""

import fcntl
import os
import select

import pytest

from initsys import console, control, protocol

EXIT = protocol.exit_line(0, "success")
STAGE = protocol.stage_line("mounts", 0.5, 0.6)


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    monkeypatch.setattr(control, "_fd", None)
    monkeypatch.setattr(control, "_backlog", None)


def read_pipe(fd):
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1 << 16).decode()
    except BlockingIOError:
        return ""


def test_requested_only_by_the_kernel_argument():
    assert control.requested({"kindling_control": "1"})
    assert not control.requested({})
    assert not control.requested({"kindling_control": "0"})


def test_lines_before_the_port_opens_are_written_once_it_does():
    r, w = os.pipe()
    control.expect()
    control.write(STAGE)
    control.write(EXIT)
    assert read_pipe(r) == ""
    control.attach(w)
    control.write("KINDLING-STAGE name=late start=1.0 end=2.0")
    assert read_pipe(r) == f"{STAGE}\n{EXIT}\nKINDLING-STAGE name=late start=1.0 end=2.0\n"
    os.close(r)
    os.close(w)


def test_nothing_is_kept_when_no_port_is_expected():
    control.write(STAGE)
    assert control._backlog is None


def test_emit_writes_markers_to_the_control_port_before_the_console(monkeypatch):
    order = []
    monkeypatch.setattr(control, "write", lambda line: order.append(("control", line)))
    monkeypatch.setattr(console, "write_console", lambda line: order.append(("console", line)))
    console.emit(EXIT)
    console.emit("kindling: reboot(POWER_OFF) failed: EPERM")
    assert order == [("control", EXIT), ("console", EXIT),
                     ("console", "kindling: reboot(POWER_OFF) failed: EPERM")]


def test_a_port_that_stays_full_loses_the_line_but_never_blocks(monkeypatch):
    monkeypatch.setattr(control, "WRITE_TIMEOUT", 0.05)
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(w, False)
    control.attach(w)
    for _ in range(120):            # more than the pipe holds: the last writes give up
        control.write(EXIT)
    assert 0 < len(read_pipe(r)) <= 4096 + len(EXIT) + 1
    os.close(r)
    os.close(w)


def test_a_helper_adopts_the_inherited_descriptor_close_on_exec():
    r, w = os.pipe()
    os.set_inheritable(w, True)
    env = {control.FD_ENV: str(w)}
    control.adopt_inherited(env)
    assert control.descriptor() == w and control.FD_ENV not in env
    assert not os.get_inheritable(w)
    control.write(EXIT)
    assert read_pipe(r) == EXIT + "\n"
    os.close(r)
    os.close(w)


def pty_pair():
    master, slave = os.openpty()
    import termios
    attrs = termios.tcgetattr(slave)
    attrs[1] |= termios.OPOST | termios.ONLCR      # a serial console's defaults
    attrs[1] &= ~(termios.OCRNL | termios.ONOCR)
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    return master, slave


def read_pty(master, size, timeout=10.0):
    """What the pty delivers (asynchronously: a kernel work item), until `size` bytes
    or nothing more within `timeout`."""
    data = b""
    while len(data) < size and select.select([master], [], [], timeout)[0]:
        data += os.read(master, 4096)
    return data


@pytest.mark.parametrize("before, expected", [
    (b"no newline", b"no newline\n" + EXIT.encode() + b"\r\n"),
    (b"ended\n", b"ended\r\n" + EXIT.encode() + b"\r\n"),
    (b"", EXIT.encode() + b"\r\n"),
])
def test_exit_starts_a_console_line_only_adding_a_newline_when_needed(before, expected):
    import termios
    master, slave = pty_pair()
    saved = termios.tcgetattr(slave)
    os.write(slave, before)
    console.emit_own_line(EXIT, fd=slave)
    assert read_pty(master, len(expected)) == expected
    assert termios.tcgetattr(slave) == saved        # the console's settings are restored
    os.close(master)
    os.close(slave)


def test_exit_on_a_descriptor_that_is_not_a_tty():
    r, w = os.pipe()
    console.emit_own_line(EXIT, fd=w)
    assert read_pipe(r) == EXIT + "\n"
    os.close(r)
    os.close(w)
