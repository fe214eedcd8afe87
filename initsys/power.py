"""Ending the VM: PID 1 never exits (that would panic the kernel); it powers off."""

import os
import signal
import time

from initsys import console, libc, protocol


def kill_everything():
    """SIGKILL every process but PID 1 (kill(-1) spares the caller)."""
    try:
        os.kill(-1, signal.SIGKILL)
    except OSError:
        pass


def power_off():
    """Sync and power off.  Never returns."""
    kill_everything()
    try:
        os.sync()
    except OSError:
        pass
    try:
        libc.reboot(libc.RB_POWER_OFF)
    except OSError as e:
        console.emit(f"kindling: reboot(POWER_OFF) failed: {e}")
        try:
            with open("/proc/sysrq-trigger", "w") as f:
                f.write("o")
        except OSError:
            pass
    while True:  # s6: "at no point is process 1 allowed to exit"
        time.sleep(3600)


def fatal(stage, error):
    """Report a fatal error in one KINDLING-FATAL line, then power off.  Never returns."""
    console.emit(protocol.fatal_line(stage, str(error)))
    power_off()
