"""Reaping orphans without stealing exit statuses (the tini/s6 duty of PID 1).

A plain waitpid(-1) loop would steal the status of children someone waits
for (CPython then reports status 0).  Instead we *peek* with
waitid(P_ALL, WNOWAIT) and reap only processes nobody tracks.  When the peeked
zombie is tracked we stop: its owner reaps it, and calls sweep() again.

A child can exist (and exit) before its pid is known to us -- trio spawns from
a worker thread, and the setup thread spawns the network helper -- so every
spawn happens under `spawning()`/`spawning_sync()`, which hold the lock that
sweep() needs; a sweep that finds it held is re-run when the spawn ends.
"""

import contextlib
import os
import signal
import threading


class Reaper:
    def __init__(self):
        self.tracked = set()
        self.reaped = 0
        self._lock = threading.Lock()   # held by a plain thread while it spawns
        self._suspended = 0             # trio tasks spawning (trio thread only)

    def track(self, pid):
        self.tracked.add(pid)

    def untrack(self, pid):
        self.tracked.discard(pid)

    @contextlib.contextmanager
    def spawning_sync(self):
        """For plain threads: no sweep while the child is spawned and tracked."""
        with self._lock:
            yield
        self.sweep()

    @contextlib.asynccontextmanager
    async def spawning(self):
        """For trio tasks (a counter: several tasks may be spawning at once)."""
        self._suspended += 1
        try:
            yield
        finally:
            self._suspended -= 1
        self.sweep()

    def sweep(self):
        """Reap every untracked zombie; stop at a tracked one (its owner reaps it)."""
        if self._suspended or not self._lock.acquire(blocking=False):
            return  # a spawn is in progress; it sweeps when it ends
        try:
            while True:
                try:
                    info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                except ChildProcessError:
                    return
                if info is None or info.si_pid == 0 or info.si_pid in self.tracked:
                    return
                try:
                    os.waitpid(info.si_pid, os.WNOHANG)
                    self.reaped += 1
                except ChildProcessError:
                    return
        finally:
            self._lock.release()

    async def run(self, *, task_status=None):
        """Sweep on every SIGCHLD.  Start with `await nursery.start(reaper.run)`."""
        import trio

        with trio.open_signal_receiver(signal.SIGCHLD) as signals:
            if task_status is not None:
                task_status.started()
            self.sweep()
            async for _ in signals:
                self.sweep()
