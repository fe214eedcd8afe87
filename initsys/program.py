"""Exec mode: run the entrypoint in the new root, forward signals, report the exit.

PID 1 itself stays in the initramfs (its Python runtime lives there).  The program
gets the new root in one of two ways:

* **No user to switch to** (the usual case): PID 1 enters the new root itself for the
  moment of the spawn (chroot, and back through a descriptor of the old root), so the
  child needs no Python between fork and exec and CPython spawns it with vfork.  A
  fork copies PID 1's page tables (~20 MiB of interpreter) and the exec tears the copy
  down again: under TCG the `program-start` stage went 0.18-0.22 s -> 0.06-0.09 s of
  guest time, on every create's path to Running.  Nothing else runs in PID 1 while it is
  chrooted: the window is synchronous on the trio thread, no import and no await in it.
* **A user** (config.json `user`): the child chroots, drops its privileges and only
  then enters the workdir, so a workdir the user may not enter fails as it would under
  docker (a forked child running Python: the old cost).

Either way PROGRAM-START is printed before the program's exec and only when exec will
find the command (127: the program never started), so the line always precedes the
program's first output on the console.
"""

import errno
import os
import signal
import subprocess

import trio

from initsys import console, control, helpers, libc, powerbutton, protocol, users
from initsys.mounts import NEWROOT
from initsys.timeline import Stage

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


class ProgramError(Exception):
    """The program could not be set up (not an exit status of the program)."""


def _runnable(argv0, env):
    """Whether exec will find argv0 (the PATH search execvp does), in the current root."""
    dirs = [""] if "/" in argv0 else os.get_exec_path(env)
    return any(os.path.isfile(p) and os.access(p, os.X_OK)
               for p in (os.path.join(d, argv0) for d in dirs))


def _announce(argv0, env, emit=console.emit):
    """PROGRAM-START, in the program's root; skipped when exec cannot find the command."""
    if _runnable(argv0, env):
        emit(protocol.program_start_line("exec"))


def _emit_in_child(line):
    """console.emit for a forked child: the control port's lock may be held by a thread
    that does not exist in the child.  Its descriptor is close-on-exec."""
    control.write_unlocked(line)
    console.write_console(line)


def _enter_root_as(newroot, workdir, argv0, env, ids):
    """The forked child's last steps before exec when it runs as a user (`ids`: uid,
    gid, groups): chroot, the user (after the chroot, which needs root), workdir."""
    def preexec():
        os.chroot(newroot)
        os.makedirs(workdir, exist_ok=True)  # like docker, a missing workdir is created
        os.setgroups(ids[2])
        os.setgid(ids[1])
        os.setuid(ids[0])
        os.chdir(workdir)
        _announce(argv0, env, _emit_in_child)
    return preexec


def oom_killed(pid):
    return f"Killed process {pid} " in libc.kernel_log()


def user_ids(cfg, env, newroot=NEWROOT):
    """config.json's `user` as (uid, gid, groups) from the new root's /etc/passwd and
    /etc/group, and `env` with HOME the user's (unless config.json's env sets it);
    (None, env) when no user is set."""
    if cfg.user is None:
        return None, env
    try:
        uid, gid, groups, home = users.resolve_user(
            cfg.user, os.path.join(newroot, "etc/passwd"), os.path.join(newroot, "etc/group"))
    except users.UserError as e:
        raise ProgramError(f"config.json user {cfg.user!r}: {e}") from None
    if "HOME" not in cfg.env:
        env = dict(env, HOME=home or "/")
    return (uid, gid, groups), env


class Program:
    """The running program: its Popen, awaited on a pidfd (no thread, no polling).  Not
    trio's Process: that is made only by trio's own spawn, which forks in a worker thread
    and so cannot hold PID 1's chroot window (see _popen_in_root)."""

    def __init__(self, popen):
        self.popen = popen
        self.pid = popen.pid

    @property
    def returncode(self):
        return self.popen.returncode

    def send_signal(self, signum):
        self.popen.send_signal(signum)

    async def wait(self):
        if self.popen.returncode is None:
            await helpers.exited(self.popen)
            self.popen.wait()
        return self.popen.returncode


def _popen_in_root(newroot, argv, env, workdir, **streams):
    """Spawn argv with PID 1 itself in the new root for the moment (see the module
    docstring): no preexec, so CPython uses vfork."""
    old_root = os.open("/", os.O_PATH | os.O_CLOEXEC)
    try:
        os.chroot(newroot)
        try:
            try:
                os.makedirs(workdir, exist_ok=True)  # like docker, a missing workdir is created
            except OSError as e:
                raise subprocess.SubprocessError(e) from None
            _announce(argv[0], env)
            return subprocess.Popen(argv, env=env, cwd=workdir, start_new_session=True, **streams)
        finally:
            os.fchdir(old_root)
            os.chroot(".")      # back in the initramfs, its root also the cwd again
    finally:
        os.close(old_root)


async def spawn(argv, env, workdir, reaper, *, newroot=NEWROOT, pass_fds=(), ids=None):
    """Start argv chrooted in newroot with its own console and /dev/null stdin.

    Returns a Program, or raises FileNotFoundError/PermissionError (exec
    failed) or ProgramError.
    """
    stdin = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    out = os.open("/dev/console", os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    streams = {"stdin": stdin, "stdout": out, "stderr": out, "pass_fds": pass_fds}
    try:
        async with reaper.spawning():
            try:
                if ids is None:
                    popen = _popen_in_root(newroot, argv, env, workdir, **streams)
                else:
                    popen = subprocess.Popen(argv, env=env, start_new_session=True,
                                             preexec_fn=_enter_root_as(newroot, workdir, argv[0], env, ids),
                                             **streams)
            except (subprocess.SubprocessError, NotADirectoryError) as e:
                if isinstance(e, OSError) and e.filename != workdir:
                    raise      # the command is not a directory: exec's error (126)
                raise ProgramError(f"workdir {workdir!r}: cannot create or enter it in the new root"
                                   + (f" as user {ids[0]}:{ids[1]}" if ids else "")) from None
            reaper.track(popen.pid)
    finally:
        os.close(stdin)
        os.close(out)
    return Program(popen)


async def _forward_signals(proc, signals):
    async for signum in signals:
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass


async def _start(cfg, reaper):
    """(the Process, None), or (None, exit code) when exec failed."""
    ids, env = user_ids(cfg, cfg.program_env())
    try:
        return await spawn(cfg.argv, env, cfg.workdir, reaper, ids=ids), None
    except FileNotFoundError:
        return None, protocol.EXIT_COMMAND_NOT_FOUND
    except PermissionError:
        return None, protocol.EXIT_NOT_EXECUTABLE
    except OSError as e:
        if e.errno in (errno.ENOEXEC, errno.EISDIR, errno.ENOTDIR):
            return None, protocol.EXIT_NOT_EXECUTABLE
        raise


def no_program():
    """Neither entrypoint nor cmd: hypeman's init then starts `sh -c "cd WORKDIR && exec "`,
    which does nothing and exits 0.  Kindling reports the same without a shell the image
    may not have: PROGRAM-START, then (by the caller) EXIT code=0 "success"."""
    with Stage("program-start"):
        console.emit(protocol.program_start_line("exec"))
    return 0, protocol.exit_message(0)


async def run(cfg, reaper, after_start=None):
    """Run the program to completion; returns (exit code, message).  `after_start`: an
    async callable awaited right after PROGRAM-START (the headers worker's launch).

    The signal receiver is open before the spawn: a SIGTERM sent to PID 1 in the
    program's first instant is forwarded, not lost (PID 1 has no default action)."""
    with trio.open_signal_receiver(*FORWARDED_SIGNALS) as signals:
        if not cfg.argv:
            result = no_program()
            proc = None
        else:
            with Stage("program-start"):  # PROGRAM-START: printed by the child
                proc, code = await _start(cfg, reaper)
            result = (code, protocol.exit_message(code))
        if proc is None:
            return result
        if after_start is not None:
            await after_start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_forward_signals, proc, signals)
            nursery.start_soon(powerbutton.forward_presses, proc)
            await proc.wait()
            nursery.cancel_scope.cancel()
    reaper.untrack(proc.pid)
    reaper.sweep()
    code, signum = protocol.exit_code_from_returncode(proc.returncode)
    oom = signum == signal.SIGKILL and oom_killed(proc.pid)
    return code, protocol.exit_message(code, signum=signum, oom=oom)
