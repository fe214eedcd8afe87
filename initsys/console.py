"""Writing PID 1's lines to the serial console (and its markers to the control port).

Each line goes out in one write() on PID 1's own descriptor 1 (the kernel's
/dev/console), so sentinel lines never interleave with other writers mid-line.
A marker line goes to the control port first (initsys/control.py), so a host
that sees it on the console finds it already in the control channel.
"""

import os
import termios

from initsys import control, protocol


def emit(line):
    if line.startswith(protocol.SENTINELS):
        control.write(line)
    write_console(line)


def emit_own_line(line, fd=1):
    """emit(), the line starting a console line even when the program's last output did
    not end in a newline (HYPEMAN-EXIT: a host must find it at the start of a line).

    The tty knows its output column.  For this one write it maps CR to NL (OCRNL)
    and drops a CR at column 0 (ONOCR), so a leading CR becomes a newline only when
    the column is not 0: the console's bytes are unchanged when the output ended
    with a newline.  (Kernel messages bypass the tty's column: at worst an empty
    line more.)  Not a tty: the line as emit() writes it.
    """
    if line.startswith(protocol.SENTINELS):
        control.write(line)
    try:
        saved = termios.tcgetattr(fd)
    except (termios.error, OSError):
        write_console(line, fd)
        return
    attrs = list(saved)
    attrs[1] = saved[1] | termios.OPOST | termios.OCRNL | termios.ONOCR
    try:
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        write_console("\r" + line, fd)
    except (termios.error, OSError):
        write_console(line, fd)
    finally:
        try:
            termios.tcsetattr(fd, termios.TCSANOW, saved)
        except (termios.error, OSError):
            pass


def write_console(line, fd=1):
    data = (line + "\n").encode("utf-8", "backslashreplace")
    try:
        while data:
            n = os.write(fd, data)
            data = data[n:]
    except OSError:
        pass  # a console that cannot be written must never take PID 1 down
