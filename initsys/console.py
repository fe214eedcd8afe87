"""Writing PID 1's lines to the serial console (and its markers to the control port).

Each line goes out in one write() on PID 1's own descriptor 1 (the kernel's
/dev/console), so sentinel lines never interleave with other writers mid-line.
A marker line goes to the control port first (initsys/control.py), so a host
that sees it on the console finds it already in the control channel.
"""

import os

from initsys import control, protocol


def emit(line):
    if line.startswith(protocol.SENTINELS):
        control.write(line)
    write_console(line)


def write_console(line, fd=1):
    data = (line + "\n").encode("utf-8", "backslashreplace")
    try:
        while data:
            n = os.write(fd, data)
            data = data[n:]
    except OSError:
        pass  # a console that cannot be written must never take PID 1 down
