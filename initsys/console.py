"""Writing PID 1's lines to the serial console.

Each line goes out in one write() on PID 1's own descriptor 1 (the kernel's
/dev/console), so sentinel lines never interleave with other writers mid-line.
"""

import os


def emit(line):
    data = (line + "\n").encode("utf-8", "backslashreplace")
    try:
        while data:
            n = os.write(1, data)
            data = data[n:]
    except OSError:
        pass  # a console that cannot be written must never take PID 1 down
