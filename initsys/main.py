"""PID 1's boot pipeline (exec mode).

Shape (after virtme-ng's init): strictly ordered basic setup, then the
program, then power-off.  Every stage prints a KINDLING-STAGE line; any
failure prints one KINDLING-FATAL line naming the stage and powers off.

Under TCG, Python imports are the boot budget (ENVIRONMENT.md): trio alone
costs ~0.7 s.  So the kernel modules load in a plain thread started *before*
trio is imported -- finit_module() runs in the kernel with the GIL released,
and the guest's second vCPU does it while the first imports trio.  Disks are
then awaited event-driven, so it does not matter which finishes first.
"""

import signal
import threading
import time

from initsys import console, kmod, mounts, power, protocol
from initsys.timeline import Stage, record

DISK_TIMEOUT = 10.0
DISK_ROLES = ("rootfs", "overlay", "config")


def describe(exc):
    """One line for a FATAL message: the innermost real error of an exception group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, (OSError, protocol.ConfigError)) and str(exc):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ModuleLoader(threading.Thread):
    def __init__(self):
        super().__init__(name="kmod", daemon=True)
        self.error = None
        self.skipped = []

    def run(self):
        start = time.monotonic()
        try:
            self.skipped = kmod.load_all()
        except BaseException as e:  # reported by the boot pipeline, never lost
            self.error = e
            return
        record("modules", start, time.monotonic())


async def boot(loader):
    import trio

    from initsys import config, devices, program, rootfs
    from initsys.reaper import Reaper

    reaper = Reaper()
    async with trio.open_nursery() as nursery:
        await nursery.start(reaper.run)

        with Stage("disks"):
            watcher = devices.BlockWatcher()
            with trio.move_on_after(DISK_TIMEOUT) as scope:
                disks = await watcher.wait_for_roles(DISK_ROLES)
            if scope.cancelled_caught:
                await trio.to_thread.run_sync(loader.join)
                if loader.error is not None:
                    Stage.current = "modules"
                    raise loader.error
                raise OSError(f"disks not found within {DISK_TIMEOUT:.0f} s: "
                              + ", ".join(watcher.missing(DISK_ROLES)))
        with Stage("rootfs"):
            rootfs.assemble(disks["rootfs"], disks["overlay"])
        with Stage("config"):
            cfg = config.load(disks["config"])
        with Stage("newroot"):
            mounts.bind_into_newroot()
        with Stage("modules-join"):
            await trio.to_thread.run_sync(loader.join)
            if loader.error is not None:
                Stage.current = "modules"
                raise loader.error
        if cfg.init_mode != "exec":
            Stage.current = "config"
            raise OSError(f"init_mode {cfg.init_mode!r} is not supported by this initrd yet")

        Stage.current = "program"
        code, message = await program.run(cfg, reaper)
        console.emit(protocol.exit_line(code, message))
        nursery.cancel_scope.cancel()


def main(t0):
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # forwarded to the program later
        record("kernel", 0.0, t0)
        with Stage("mounts"):
            mounts.mount_basic()
        loader = ModuleLoader()
        loader.start()
        with Stage("imports"):
            import trio
            import initsys.devices  # noqa: F401  (pyudev)
        trio.run(boot, loader)
    except BaseException as e:
        power.fatal(Stage.current, describe(e))
    power.power_off()
