"""PID 1's side of the kernel-headers worker in exec mode (PROTOCOL.md §5): start it in
the background once the new root is ready, and never wait for it.

The worker (initsys/headers.py) prints its own sentinels on the console (and on
the control port, whose descriptor it inherits: initsys/control.py) and
lowers its own priority.  Nobody needs its exit status, so it is untracked
right after the launch and the reaper's orphan sweep reaps it whenever it ends;
its Popen is kept referenced here, so CPython never polls (and reaps) that pid
itself.  A worker still running when the program ends dies with the power-off;
its install is redone on the next boot (the `build` link is its commit point).

The `baseline` boot strategy (the benchmarks' "before", initsys/stages.py)
instead keeps the worker tracked and waits for it to exit before the agent and
the program; a worker that fails (it printed FAILED) or outlives the limit
does not stop the boot.
"""

import os

from initsys import console, control, helpers
from initsys.headers import HEADERS_DIR, STATUS_FILE, write_atomic

_launched = []
BASELINE_TIMEOUT = 900.0  # the first install takes 20-35 s under TCG on an idle host


def wanted(cfg, directory=HEADERS_DIR):
    """Headers are wanted and the initrd ships any (the worker itself reports FAILED
    when none is for the running kernel)."""
    if cfg.skip_kernel_headers:
        return False
    try:
        return bool(os.listdir(directory))
    except FileNotFoundError:
        return False  # an initrd built --no-headers


def mark_pending(root):
    """The status file says `pending` (PROTOCOL.md §5) before the program starts, also
    when the worker is launched only after it (initsys/boot.py)."""
    write_atomic(os.path.join(root, STATUS_FILE), "pending\n")


def start(cfg, reaper, root, background=True):
    """Write `pending` and launch the worker on `root` (the boot's `headers-spawn`
    step); returns its Helper, or None.  Not `background`: it stays tracked, for `wait()`."""
    if not wanted(cfg):
        return None
    mark_pending(root)
    console = os.open("/dev/console", os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    ctl = control.descriptor()   # its HEADERS-* lines go to the control port too
    env = None if ctl is None else dict(os.environ, **{control.FD_ENV: str(ctl)})
    try:
        helper = helpers.launch(reaper, "headers", "--root", root, stdout=console,
                                stderr=console, new_session=True, env=env,
                                pass_fds=() if ctl is None else (ctl,))
    finally:
        os.close(console)
    if background:
        reaper.untrack(helper.popen.pid)
        reaper.sweep()  # in case it ended while still tracked
        _launched.append(helper)
    return helper


async def wait(reaper, helper, timeout=BASELINE_TIMEOUT):
    """The baseline strategy: wait for the worker to exit.  Its failure is its own to
    report (it printed HEADERS-FAILED); ours is only a console line (before PROGRAM-START, so no program output)."""
    try:
        await helpers.finish(reaper, helper, timeout=timeout)
    except helpers.HelperFailed as e:
        console.emit(f"kindling: kernel-headers worker: {e}")
