"""PID 1's helper processes (the network stage): started from the initrd's own
Python with the interpreter flags PID 1 has, tracked by the reaper so their
exit status is never stolen, and bounded by a timeout at the call site.

A helper can be launched from a plain thread (`launch`, as the setup thread
does as soon as the config is known) and awaited later from trio (`finish`).
"""

import os
import subprocess
import sys
import time

import initsys

LIB = os.path.dirname(os.path.dirname(os.path.abspath(initsys.__file__)))
# A helper module may set EXIT_AT_ONCE: its process then ends with os._exit once main
# returns (its output flushed) instead of tearing the interpreter down -- for the
# network helper, pyroute2's teardown cost ~0.4 s of guest CPU under TCG in a
# template's clone, on the critical path.  Such a module keeps no file unflushed.
_BOOT = ("import os, sys; sys.path.insert(0, sys.argv[1]); "
         "from initsys import {module} as m; code = m.main(sys.argv[2:]); "
         "sys.stdout.flush(); sys.stderr.flush(); "
         "os._exit(code) if getattr(m, 'EXIT_AT_ONCE', False) else sys.exit(code)")
MAX_STDERR = 65536
# A helper launched with reports=True writes DONE on its stdout (a pipe) once its work is
# done, before it exits: `finish` returns then, and the exit is reaped later.  An exit is
# the kernel tearing down an interpreter's address space: ~0.2 s of guest time under
# TCG after a template's restore (the network helper's, on a clone's critical path).
DONE = b"done\n"


def helper_argv(module, *args):
    flags = "-IS" if sys.flags.no_site else "-I"
    return [sys.executable, flags, "-c", _BOOT.format(module=module), LIB, *args]


def read_all(fd):
    """Everything until EOF from a pipe (a `go` message), then close it."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


class HelperFailed(OSError):
    pass


class Helper:
    """A launched helper: its process, and when its work started (guest clock).

    A *deferred* helper starts, imports what it needs, then blocks on its `go`
    pipe until `release(data)` hands it its work (or `cancel()` closes the pipe
    unwritten and it exits): the imports happen before the work is known.
    """

    def __init__(self, module, popen, started, go=None, reports=False):
        self.module = module
        self.popen = popen
        self.started = started
        self.reports = reports
        self._go = go

    @property
    def released(self):
        return self._go is None

    def release(self, data):
        try:
            os.write(self._go, data)  # small (a few hundred bytes): fits the pipe
        except BrokenPipeError:
            pass  # it died already; finish() reports how
        finally:
            os.close(self._go)
            self._go = None
        self.started = time.monotonic()

    def cancel(self, reaper=None):
        """Not wanted: close `go` unwritten and it exits.  With `reaper`, nobody needs
        its status any more, so the reaper may take it."""
        if self._go is not None:
            os.close(self._go)
            self._go = None
        if reaper is not None:
            reaper.untrack(self.popen.pid)


def report_done():
    """In a helper launched with reports=True: its work is done (see DONE)."""
    os.write(1, DONE)


def launch(reaper, module, *args, deferred=False, env=None, pass_fds=(),
           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, new_session=False, reports=False):
    """Start `initsys.<module>.main(args)` from any thread; the reaper tracks it.
    Deferred: main gets `--go-fd N` first and reads its work from that fd.  Reports:
    its stdout is a pipe on which it says `report_done()`."""
    go_r = go_w = None
    if deferred:
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        args = ("--go-fd", str(go_r), *args)
        pass_fds = (go_r, *pass_fds)
    try:
        with reaper.spawning_sync():
            popen = subprocess.Popen(helper_argv(module, *args), env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE if reports else stdout, stderr=stderr,
                                     pass_fds=pass_fds, start_new_session=new_session)
            reaper.track(popen.pid)
    finally:
        if go_r is not None:
            os.close(go_r)
    return Helper(module, popen, time.monotonic(), go_w, reports)


async def finish(reaper, helper, *, timeout):
    """Wait (trio, on a pidfd or the DONE pipe: no polling) for the helper; raise
    HelperFailed with its last stderr line when it fails or outlives `timeout` seconds
    from its launch.  A reporting helper that said DONE is done: its exit is reaped by
    a system task later."""
    import trio

    remaining = helper.started + timeout - time.monotonic()
    with trio.move_on_after(max(remaining, 0)) as scope:
        if helper.reports and await _said_done(helper.popen):
            trio.lowlevel.spawn_system_task(_reap_later, reaper, helper)
            return
        await exited(helper.popen)
    if scope.cancelled_caught:
        helper.popen.kill()
    err = _collect(reaper, helper)
    if scope.cancelled_caught:
        raise HelperFailed(f"{helper.module} helper did not finish within {timeout:.0f} s")
    if helper.popen.returncode != 0:
        lines = err.decode("utf-8", "replace").strip().splitlines()
        raise HelperFailed(lines[-1] if lines else f"{helper.module} helper exited with {helper.popen.returncode}")


async def _said_done(popen):
    """DONE read from the helper's stdout; False at EOF (it exited without saying it)."""
    import trio

    await trio.lowlevel.wait_readable(popen.stdout.fileno())
    return os.read(popen.stdout.fileno(), len(DONE)) == DONE


async def exited(popen):
    """Wait (trio) until the process exits, on a pidfd; it is not reaped."""
    import trio

    pidfd = os.pidfd_open(popen.pid)
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


def _collect(reaper, helper):
    """Reap the exited (or killed) helper; returns its stderr."""
    popen = helper.popen
    popen.wait()
    reaper.untrack(popen.pid)
    err = popen.stderr.read(MAX_STDERR) if popen.stderr else b""
    for pipe in (popen.stdout, popen.stderr):
        if pipe:
            pipe.close()
    return err


async def _reap_later(reaper, helper):
    """A system task (it must not raise): reap a helper that said DONE once it exits."""
    try:
        await exited(helper.popen)
        _collect(reaper, helper)
    except OSError:
        pass  # gone already: nothing left to reap
