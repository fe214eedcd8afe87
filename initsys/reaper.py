"""Reaping orphans without stealing exit statuses (the tini/s6 duty of PID 1).

A plain waitpid(-1) loop would steal the status of children trio is waiting
for (CPython then reports status 0).  Instead we *peek* with
waitid(P_ALL, WNOWAIT) and reap only processes nobody tracks.  When the peeked
zombie is tracked we stop: trio reaps it, and the owner calls sweep() again.

trio spawns processes from a worker thread, so a child can exist (and exit)
before its pid is known; `spawning()` suspends reaping for that window.
"""

import contextlib
import os
import signal

import trio


class Reaper:
    def __init__(self):
        self.tracked = set()
        self._suspended = 0
        self.reaped = 0

    def track(self, pid):
        self.tracked.add(pid)

    def untrack(self, pid):
        self.tracked.discard(pid)

    @contextlib.asynccontextmanager
    async def spawning(self):
        self._suspended += 1
        try:
            yield
        finally:
            self._suspended -= 1
        self.sweep()

    def sweep(self):
        """Reap every untracked zombie; stop at a tracked one (its owner reaps it)."""
        if self._suspended:
            return
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

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        """Sweep on every SIGCHLD.  Start with `await nursery.start(reaper.run)`."""
        with trio.open_signal_receiver(signal.SIGCHLD) as signals:
            task_status.started()
            self.sweep()
            async for _ in signals:
                self.sweep()
