"""Exec mode: run the entrypoint in the new root, forward signals, report the exit.

PID 1 itself stays in the initramfs (its Python runtime lives there); the
program is chrooted into the new root by the child between fork and exec.
"""

import errno
import os
import signal
import subprocess

import trio

from initsys import console, control, libc, powerbutton, protocol, users
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


def _enter_root(newroot, workdir, argv0, env, ids=None):
    """The child's last steps before exec: chroot, workdir, the user (`ids`: uid, gid,
    groups; after the chroot, which needs root), and HYPEMAN-PROGRAM-START.

    The child prints PROGRAM-START itself, on its own console descriptor, right
    before exec: so the line always precedes the program's first output on the
    console (printed by PID 1 after the spawn, a fast program's output could come
    first under load and the host would take it for boot noise).  It is skipped
    when exec cannot find the command (127: the program never started).  The
    line goes to the control port too (initsys/control.py), first.
    """
    def preexec():
        os.chroot(newroot)
        os.makedirs(workdir, exist_ok=True)  # like docker, a missing workdir is created
        if ids is not None:
            os.setgroups(ids[2])
            os.setgid(ids[1])
            os.setuid(ids[0])
        os.chdir(workdir)
        if _runnable(argv0, env):
            line = protocol.program_start_line("exec")
            control.write_unlocked(line)  # the descriptor is close-on-exec: the program never has it
            os.write(1, (line + "\n").encode())
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


async def spawn(argv, env, workdir, reaper, *, newroot=NEWROOT, pass_fds=(), ids=None):
    """Start argv chrooted in newroot with its own console and /dev/null stdin.

    Returns a trio Process, or raises FileNotFoundError/PermissionError (exec
    failed) or ProgramError.
    """
    stdin = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    out = os.open("/dev/console", os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        async with reaper.spawning():
            try:
                proc = await trio.lowlevel.open_process(
                    argv, env=env, stdin=stdin, stdout=out, stderr=out,
                    preexec_fn=_enter_root(newroot, workdir, argv[0], env, ids), start_new_session=True,
                    pass_fds=pass_fds)
            except subprocess.SubprocessError:
                raise ProgramError(f"workdir {workdir!r}: cannot create or enter it in the new root"
                                   + (f" as user {ids[0]}:{ids[1]}" if ids else "")) from None
            reaper.track(proc.pid)
    finally:
        os.close(stdin)
        os.close(out)
    return proc


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
