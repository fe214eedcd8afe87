"""PID 1's side of the kernel-headers worker in exec mode (PROTOCOL.md §5): start it in
the background once the new root is ready, and never wait for it.

The worker (initsys/headers.py) prints its own sentinels on the console and
lowers its own priority.  Nobody needs its exit status, so it is untracked
right after the launch and the reaper's orphan sweep reaps it whenever it ends;
its Popen is kept referenced here, so CPython never polls (and reaps) that pid
itself.  A worker still running when the program ends dies with the power-off;
its install is redone on the next boot (the `build` link is its commit point).
"""

import os

from initsys import helpers
from initsys.headers import HEADERS_DIR, STATUS_FILE, write_atomic
from initsys.timeline import Stage

_launched = []


def wanted(cfg, directory=HEADERS_DIR):
    """Headers are wanted and the initrd ships any (the worker itself reports FAILED
    when none is for the running kernel)."""
    if cfg.skip_kernel_headers:
        return False
    try:
        return bool(os.listdir(directory))
    except FileNotFoundError:
        return False  # an initrd built --no-headers


def start(cfg, reaper, root):
    """Write `pending` and launch the worker on `root`; returns its Helper, or None."""
    if not wanted(cfg):
        return None
    with Stage("headers-spawn"):
        write_atomic(os.path.join(root, STATUS_FILE), "pending\n")
        console = os.open("/dev/console", os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            helper = helpers.launch(reaper, "headers", "--root", root, stdout=console,
                                    stderr=console, new_session=True)
        finally:
            os.close(console)
        reaper.untrack(helper.popen.pid)
        reaper.sweep()  # in case it ended while still tracked
        _launched.append(helper)
    return helper
