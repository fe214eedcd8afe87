"""The module closure, loaded from /init's first lines (issue 14).

Under TCG, the interpreter's start and `from initsys import main` keep PID 1's one
thread busy for ~0.75 s after /init's first line, and the second vCPU has nothing to
do then.  The module closure (0.8-1.4 s of guest time, nearly all of it in the
kernel: finit_module releases the GIL) is the one piece of the boot that needs
nothing before it -- no mount (its files are the initramfs's), no config -- so /init
starts it in a thread before it imports anything else.  The `modules` step, in its
place in the boot's order (initsys/main.py), joins that thread: its KINDLING-STAGE
line carries the thread's own start and end, and the thread's error fails the boot
there, as `modules`, as before.

A template's boot (kindling_checkpoint=1) loads its closure its own way before the
checkpoint (initsys/checkpoint.py): nothing starts here for it.

Written with a bare threading.Thread: the step runner's SetupThread (initsys/steps.py)
comes with the timeline and failure modules that /init must not wait for.
"""

import os
import threading
import time

_loading = None


class _Loading(threading.Thread):
    def __init__(self):
        super().__init__(name="modules", daemon=True)
        self.began = self.ended = None
        self.error = None

    def run(self):
        self.began = time.monotonic()
        try:
            from initsys import kmod
            kmod.load_all()
        except BaseException as e:  # noqa: BLE001 -- handed to the `modules` step
            self.error = e
        finally:
            self.ended = time.monotonic()


def start(environ=os.environ):
    """/init, before anything else is imported: start loading the closure (not for a
    template's boot)."""
    global _loading
    from initsys import checkpoint
    if checkpoint.requested(environ):
        return
    _loading = _Loading()
    _loading.start()


def join():
    """Wait for the closure: (began, ended) of its load; raises the load's error.  None
    when nothing was started (the caller loads it itself)."""
    if _loading is None:
        return None
    _loading.join()
    if _loading.error is not None:
        raise _loading.error
    return _loading.began, _loading.ended
