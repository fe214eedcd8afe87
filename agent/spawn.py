"""Starting an exec's command without a thread hop, and waiting for it on a pidfd.

trio.lowlevel.open_process runs subprocess.Popen in a worker thread, because a
Popen may block; that is two thread handoffs per exec, a measurable part of a
`true` round trip under TCG (issue 14).  Here Popen is called on the event
loop when it cannot block for long: with no preexec_fn and no user switch,
CPython's _posixsubprocess uses vfork(), so the agent is held only until the
child has called exec.  A command that needs a preexec_fn (a TTY's controlling
terminal) or a uid/gid/groups change gets a full fork() of the agent, which can
take milliseconds of copying page tables: that still goes to a thread.

Written here rather than taken from trio because trio has no public way to wrap
a Popen it did not start; the waiting (pidfd + wait_readable, then reaping
through Popen so its returncode is set) is what trio.Process does.
"""

import os
import subprocess
from functools import partial

import trio


class Child:
    """A started command: pid, returncode (None while it runs; reaps if it ended), wait()."""

    def __init__(self, popen, stdin=None, stdout=None, stderr=None):
        self._popen = popen
        self.pid = popen.pid
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self._pidfd = os.pidfd_open(self.pid)

    @property
    def returncode(self):
        return self._popen.poll()

    async def wait(self):
        """The exit status (negative: killed by that signal).  One waiter at a time."""
        while self._popen.poll() is None:
            await trio.lowlevel.wait_readable(self._pidfd)
        self.close()
        return self._popen.returncode

    def close(self):
        """Release the pidfd (the process itself is left alone)."""
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


def _pipe(child_reads):
    """(trio stream for the agent's end, the child's end fd)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    if child_reads:
        return trio.lowlevel.FdStream(w), r
    return trio.lowlevel.FdStream(r), w


async def start(argv, *, stdin, stdout, stderr, preexec_fn=None, user=None, **options):
    """Popen(argv, ...) as a Child.  stdin/stdout/stderr: subprocess.PIPE (the Child gets a
    trio stream), subprocess.DEVNULL or an fd.  Raises OSError when it cannot start."""
    ours, theirs = {}, {"stdin": stdin, "stdout": stdout, "stderr": stderr}
    try:
        for name, child_reads in (("stdin", True), ("stdout", False), ("stderr", False)):
            if theirs[name] == subprocess.PIPE:
                ours[name], theirs[name] = _pipe(child_reads)
        if user is not None:
            options.update(user=user[0], group=user[1], extra_groups=user[2])
        popen = partial(subprocess.Popen, argv, preexec_fn=preexec_fn, **theirs, **options)
        if preexec_fn is None and user is None:
            proc = popen()
        else:
            proc = await trio.to_thread.run_sync(popen)
    except BaseException:
        for stream in ours.values():
            stream.close()
        raise
    finally:
        for name in ours:
            os.close(theirs[name])
    return Child(proc, **ours)
