"""The ACPI power button: the host's graceful stop (QMP `system_powerdown`).

On `-machine microvm` QEMU signals a power-down through the ACPI GED, which the
kernel's `button` driver turns into KEY_POWER on an evdev input device named
"Power Button".  PID 1 has no acpid: it reads that device itself (trio
wait_readable, no polling) and forwards SIGTERM to the program, which then
exits and PID 1 powers off as usual.  No device (another machine type, or the
modules missing) just means no graceful stop: the host falls back to quitting
QEMU after its grace period.
"""

import os
import signal
import struct

SYSFS_INPUT = "/sys/class/input"
EVENT = struct.Struct("llHHi")  # struct input_event on x86_64: timeval, type, code, value
EV_KEY = 1
KEY_POWER = 116


def find_power_button(sysfs=SYSFS_INPUT):
    """/dev/input/eventN of the device named "Power Button", or None."""
    try:
        entries = sorted(os.listdir(sysfs))
    except FileNotFoundError:
        return None
    for entry in entries:
        if not entry.startswith("event"):
            continue
        try:
            with open(f"{sysfs}/{entry}/device/name") as f:
                if f.read().strip() == "Power Button":
                    return f"/dev/input/{entry}"
        except OSError:
            continue
    return None


def presses(data):
    """How many KEY_POWER presses a chunk of input events holds."""
    count = 0
    for offset in range(0, len(data) - EVENT.size + 1, EVENT.size):
        _, _, typ, code, value = EVENT.unpack_from(data, offset)
        if typ == EV_KEY and code == KEY_POWER and value == 1:
            count += 1
    return count


async def forward_presses(proc):
    """Send SIGTERM to `proc` on each power-button press (runs until cancelled)."""
    import trio

    path = find_power_button()
    if path is None:
        return
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                data = os.read(fd, EVENT.size * 64)
            except BlockingIOError:
                continue
            if presses(data):
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    return
    finally:
        os.close(fd)
