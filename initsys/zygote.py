"""Forking a helper from PID 1 itself (a zygote), instead of starting a new interpreter.

A child forked from PID 1 shares, copy-on-write, everything PID 1 imported
before the fork: under TCG `import trio` alone is ~0.9 s of guest CPU and each
interpreter's heap of code objects ~13 MiB (ENVIRONMENT.md, issue 14), so the
agent forked after PID 1's imports neither imports trio again nor holds its own
copy of it.  `gc.freeze()` before the fork moves every object to the permanent
generation, so the child's collector never writes to (and so never copies) the
shared pages.

The fork happens on PID 1's main thread before `trio.run()` (a child forked
inside a running trio loop would share its epoll and wakeup fds; agent.main
refuses that).  Other threads (the setup thread) may be running: the child
gets only the forking thread, so it must not take a lock another thread might
hold -- it imports nothing after the fork (the agent's imports are done before
it, or before any other thread exists) and forgets the control port's state.
It closes every inherited descriptor but the ones it is given: a pipe end held
by it would keep another helper from ever seeing EOF (its `go` pipe, its
stderr).  The child never returns into PID 1's code: `os._exit` always.

Written here rather than with subprocess/multiprocessing: those exec a fresh
interpreter (the cost this module exists to avoid) or, with multiprocessing's
"fork" method, bring their own pipes, pickling and atexit machinery for what is
a dozen lines.
"""

import gc
import os
import sys

NULL = "/dev/null"


def fork(reaper, child, *, keep_fds=(), stdout=None, stderr=None, env=None, name=None):
    """Fork, run `child()` in the child and exit with its return value (1 on an
    exception, with its traceback on stderr).  The reaper tracks the pid, which
    is returned.  stdout/stderr: descriptors for the child's 1 and 2 (default:
    /dev/null); env replaces the child's os.environ; name goes to its
    /proc/PID/comm (what ps and pgrep show: its cmdline stays PID 1's)."""
    gc.freeze()  # everything so far: shared, never scanned by the child's collector
    with reaper.spawning_sync():
        pid = os.fork()
        if pid == 0:
            _child(child, keep_fds, stdout, stderr, env, name)  # never returns
        reaper.track(pid)
    return pid


def _child(child, keep_fds, stdout, stderr, env, name):
    code = 1
    try:
        os.setsid()
        _standard_fds(stdout, stderr)
        _close_all_but((0, 1, 2, *keep_fds))
        from initsys import control
        control.forget()
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        if name:
            _set_name(name)
        gc.enable()  # PID 1 runs with it off until the program; a long-lived child must not
        code = child()
    except BaseException:  # noqa: BLE001 -- the child must never return into PID 1's code
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(code if isinstance(code, int) else 1)


def _standard_fds(stdout, stderr):
    null = os.open(NULL, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null if stdout is None else stdout, 1)
    os.dup2(null if stderr is None else stderr, 2)
    if null > 2:
        os.close(null)


def _close_all_but(keep):
    """Close every descriptor not in `keep` (listed from /proc/self/fd)."""
    keep = set(keep)
    fd_dir = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fds = [int(n) for n in os.listdir(fd_dir)]
    finally:
        os.close(fd_dir)
    for fd in fds:
        if fd not in keep and fd != fd_dir:
            try:
                os.close(fd)
            except OSError:
                pass  # the listing's own descriptor, closed already


def _set_name(name):
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass  # cosmetic: only ps and the benchmarks read it
