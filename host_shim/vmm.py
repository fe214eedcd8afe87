"""An instance's VMM (QEMU): launch it detached, ask it how it is, stop it.

* Launch: QEMU runs in its own session, started with `-S` (the VMM exists but
  the guest has not run: `Created`) and `-pidfile`; `cont` starts the guest.
  The shim that launched it may exit; QEMU keeps running and appending to
  logs/app.log itself.
* Liveness: QEMU holds a POSIX lock on its pidfile for as long as it runs, so
  `F_GETLK` on that file answers "is it running, and which pid" from any
  process, with no pid-reuse race and no matter who its parent is.  (A killed
  QEMU leaves the file behind; nobody holds the lock then.)
* Status: QMP `query-status` on the instance's socket.
* Stop: ACPI power-down, a grace period, QMP `quit`, SIGTERM, SIGKILL -- each
  step only if the one before did not end it.  Signals go through a pidfd
  opened while the pidfile lock showed the pid to be this instance's QEMU.
"""

import fcntl
import os
import signal
import struct
from dataclasses import dataclass
from pathlib import Path

import trio

from . import qmp
from . import run as run_mod
from .errors import die
from .instance import Instance
from .state import QMP_STATUS, Vmm

QMP_READY_TIMEOUT = 60.0   # QEMU loading kernel + initrd and opening QMP (slow under load)
QMP_TIMEOUT = 10.0         # one QMP command, QEMU busy emulating 8 guests on 2 cores
QUIT_GRACE = 5.0
TERM_GRACE = 3.0

_FLOCK = "hhqqi"           # struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid


def pid_of(instance: Instance) -> int | None:
    """The pid of the instance's running QEMU, or None when it is not running."""
    try:
        fd = os.open(instance.pidfile, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        l_type, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query))
    finally:
        os.close(fd)
    return None if l_type == fcntl.F_UNLCK else pid


@dataclass(frozen=True)
class Probe:
    vmm: Vmm
    pid: int | None = None
    error: str | None = None
    qmp_status: str | None = None


async def probe(instance: Instance) -> Probe:
    """What the VMM says: absent, unreachable (with the error), or its QMP run state."""
    pid = pid_of(instance)
    if pid is None:
        return Probe(Vmm.ABSENT)
    try:
        with trio.fail_after(QMP_TIMEOUT):
            status = await qmp.query_status(instance.qmp_socket)
    except trio.TooSlowError:
        return Probe(Vmm.UNREACHABLE, pid,
                     f"QEMU (pid {pid}) did not answer QMP query-status within {QMP_TIMEOUT:g} s")
    except qmp.QMPError as e:
        if pid_of(instance) is None:
            return Probe(Vmm.ABSENT)        # it exited while we asked
        return Probe(Vmm.UNREACHABLE, pid, f"QEMU (pid {pid}) is running but {e.message}")
    vmm = QMP_STATUS.get(status)
    if vmm is None:
        return Probe(Vmm.UNREACHABLE, pid, f"QEMU reports an unknown run state {status!r}")
    return Probe(vmm, pid, qmp_status=status)


def tail(path: Path, lines: int = 10) -> str:
    """The last non-empty lines of a log, indented, for an error hint."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(f"  {l}" for l in [l for l in text.splitlines() if l.strip()][-lines:])


async def launch(instance: Instance, argv: list[str]) -> int:
    """Start QEMU (argv has -S and -pidfile) detached; return its pid once QMP answers."""
    with open(instance.vmm_log, "ab") as log:
        pid = run_mod.spawn_detached(argv, stdout=log.fileno(), stderr=log.fileno())
    deadline = trio.current_time() + QMP_READY_TIMEOUT
    while True:
        status = run_mod.reap_detached(pid)
        if status is not None:
            said = tail(instance.vmm_log)
            die(f"QEMU failed to start ({run_mod.describe_returncode(status)})",
                hint=("QEMU said:\n" + said) if said else
                f"command: {run_mod.format_command(argv)}")
        if pid_of(instance) == pid:
            try:
                with trio.fail_after(QMP_TIMEOUT):
                    await qmp.query_status(instance.qmp_socket)
                return pid
            except (qmp.QMPError, trio.TooSlowError):
                pass
        if trio.current_time() > deadline:
            os.kill(pid, signal.SIGKILL)
            die(f"QEMU (pid {pid}) did not open its QMP socket within {QMP_READY_TIMEOUT:g} s; "
                "killed it", hint=f"see {instance.vmm_log}")
        await trio.sleep(0.01)


async def cont(instance: Instance) -> None:
    """Start the guest of a QEMU launched with -S."""
    try:
        with trio.fail_after(QMP_TIMEOUT):
            await qmp.execute(instance.qmp_socket, "cont")
    except trio.TooSlowError:
        die(f"QEMU did not answer QMP cont within {QMP_TIMEOUT:g} s")


async def _gone_within(pidfd: int, pid: int, seconds: float) -> bool:
    with trio.move_on_after(seconds):
        await run_mod.wait_pidfd(pidfd, pid)
        return True
    return False


async def wait_exit(pid: int) -> int | None:
    """Wait until QEMU has exited; its exit status if it is this process's child."""
    return await run_mod.wait_detached(pid)


async def stop(instance: Instance, *, graceful: float) -> str | None:
    """Stop the instance's QEMU; how it ended ("powered off", "quit", "terminated",
    "killed"), or None when it was not running.  `graceful` is how long the guest
    gets to power off after an ACPI power-button press (0: skip that step)."""
    pid = pid_of(instance)
    if pid is None:
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    try:
        if pid_of(instance) != pid:     # the pidfd might name a recycled pid
            return None
        with trio.CancelScope(shield=True):
            return await _stop(instance, pidfd, pid, graceful)
    finally:
        os.close(pidfd)


async def _stop(instance: Instance, pidfd: int, pid: int, graceful: float) -> str:
    if graceful > 0:
        try:
            with trio.fail_after(QMP_TIMEOUT):
                await qmp.execute(instance.qmp_socket, "system_powerdown")
            if await _gone_within(pidfd, pid, graceful):
                return "powered off"
        except (qmp.QMPError, trio.TooSlowError):
            pass
    with trio.move_on_after(QMP_TIMEOUT):
        if await qmp.quit(instance.qmp_socket) and await _gone_within(pidfd, pid, QUIT_GRACE):
            return "quit"
    for signum, grace, how in ((signal.SIGTERM, TERM_GRACE, "terminated"),
                               (signal.SIGKILL, None, "killed")):
        try:
            signal.pidfd_send_signal(pidfd, signum)
        except ProcessLookupError:
            return how
        if grace is None:
            await run_mod.wait_pidfd(pidfd, pid)
            return how
        if await _gone_within(pidfd, pid, grace):
            return how
    raise AssertionError("unreachable")
