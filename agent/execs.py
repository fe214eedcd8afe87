"""exec: run a command for the host, stream its stdio, report how it ended.

Every command gets its own session and process group (start_new_session), so
a timeout, a cancel or a lost connection can kill the whole group --
grandchildren included -- with one killpg(SIGKILL).  In TTY mode the command
runs on a fresh pty that is its controlling terminal; stdout and stderr are
then one stream ("out"), the host's stdin EOF becomes VEOF (^D) and a resize
is a TIOCSWINSZ, which sends SIGWINCH to the foreground group.

The exit is reported after the output channels are drained: {"code": n} with
128+N and "signal": N when killed by signal N, or code 124 and
"timed_out": true when the timeout (which bounds the process *and* its
output) expired.  A command that cannot be started gives 127 (not found) or
126 (not executable), like a shell, with an "error" text.
"""

import errno
import fcntl
import os
import signal
import struct
import subprocess
import termios

import trio

from agent import mux as muxmod
from agent.wire import ProtocolError, field
from initsys import users

EXIT_TIMED_OUT = 124
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
KILL_GRACE = 5.0
MAX_TIMEOUT = 365 * 86400.0


class RequestError(Exception):
    """A request the agent refuses: names the field and why."""

    def __init__(self, code, message, field=None):
        super().__init__(message)
        self.code = code
        self.field = field


# --- users --------------------------------------------------------------------

def resolve_user(spec, passwd="/etc/passwd", group="/etc/group"):
    """initsys/users.py's resolve_user (one definition, shared with PID 1), its error
    as a RequestError naming the field."""
    try:
        return users.resolve_user(spec, passwd, group)
    except users.UserError as e:
        raise RequestError("invalid", str(e), "user") from None


# --- the request --------------------------------------------------------------

class ExecSpec:
    __slots__ = ("argv", "env", "home_given", "cwd", "user", "tty", "rows", "cols", "timeout", "stdin")


def parse_exec(body, base_env):
    s = ExecSpec()
    argv = field(body, "argv", list, required=True, where="exec")
    if not argv:
        raise RequestError("invalid", "exec.argv: must not be empty", "argv")
    for i, a in enumerate(argv):
        if not isinstance(a, str) or "\0" in a:
            raise RequestError("invalid", f"exec.argv[{i}]: expected a string without NUL", "argv")
    s.argv = argv
    env = dict(base_env)
    overrides = field(body, "env", dict, default={}, where="exec")
    s.home_given = "HOME" in overrides
    for key, value in overrides.items():
        if not isinstance(value, str) or not key or "=" in key or "\0" in key or "\0" in value:
            raise RequestError("invalid", f"exec.env[{key!r}]: expected NAME (no '=' or NUL) -> string", "env")
        env[key] = value
    s.env = env
    s.cwd = field(body, "cwd", str, where="exec")
    s.user = field(body, "user", (str, int), where="exec")
    s.tty = field(body, "tty", bool, default=False, where="exec")
    s.rows = field(body, "rows", int, default=24, where="exec")
    s.cols = field(body, "cols", int, default=80, where="exec")
    if not (0 < s.rows < 1 << 16 and 0 < s.cols < 1 << 16):
        raise RequestError("invalid", "exec.rows/cols: expected 1..65535", "rows")
    timeout = field(body, "timeout", float, where="exec")
    if timeout is not None and not 0 < timeout <= MAX_TIMEOUT:
        raise RequestError("invalid", f"exec.timeout: expected 0 < seconds <= {MAX_TIMEOUT:.0f}", "timeout")
    s.timeout = timeout
    s.stdin = field(body, "stdin", bool, default=False, where="exec")
    return s


def set_winsize(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_controlling_tty():
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


# --- running ------------------------------------------------------------------

def _killpg(pid, signum=signal.SIGKILL):
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


async def _spawn(spec):
    kwargs = {"env": spec.env, "cwd": spec.cwd, "start_new_session": True}
    home = None
    if spec.user is not None:
        uid, gid, extra, home = resolve_user(spec.user)
        kwargs.update(user=uid, group=gid, extra_groups=extra)
        if home and not spec.home_given:
            spec.env["HOME"] = home
    master = None
    if spec.tty:
        master, slave = os.openpty()
        os.set_inheritable(master, False)
        try:
            set_winsize(master, spec.rows, spec.cols)
            if spec.user is not None:
                os.fchown(slave, kwargs["user"], -1)
            spec.env.setdefault("TERM", "xterm")
            proc = await trio.lowlevel.open_process(
                spec.argv, stdin=slave, stdout=slave, stderr=slave,
                preexec_fn=_take_controlling_tty, **kwargs)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
    else:
        proc = await trio.lowlevel.open_process(
            spec.argv, stdin=subprocess.PIPE if spec.stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
    return proc, master


def _start_error(spec, e):
    """(code, message) for an exec that failed to start, or raise RequestError."""
    if getattr(e, "filename", None) is not None and spec.cwd is not None and e.filename == spec.cwd:
        raise RequestError("not_found" if e.errno == errno.ENOENT else "invalid",
                           f"exec.cwd {spec.cwd!r}: {e.strerror}", "cwd")
    if isinstance(e, FileNotFoundError):
        return EXIT_NOT_FOUND, f"command not found: {spec.argv[0]}"
    if isinstance(e, PermissionError) or e.errno in (errno.ENOEXEC, errno.EISDIR, errno.ENOTDIR):
        return EXIT_NOT_EXECUTABLE, f"permission denied (command not executable): {spec.argv[0]}"
    raise e


async def _pump_out(session, stream, ch, chunk):
    try:
        while True:
            try:
                data = await stream.receive_some(chunk)
            except trio.BrokenResourceError:   # pty master: EIO once every slave is closed
                data = b""
            if not data:
                break
            await session.send_data(ch, data)
    finally:
        await stream.aclose()
    await session.send_eof(ch)


async def _pump_in(session, stream, tty):
    """Host stdin -> the command.  After the command stops reading, input is dropped
    (still consumed, so the host's credit keeps flowing)."""
    broken = stream is None
    last = b"\n"
    while True:
        item = await session.receive("in")
        if item is muxmod.EOF:
            break
        if not isinstance(item, bytes):
            raise ProtocolError("exec: stdin carries data frames only")
        if broken or not item:
            continue
        try:
            await stream.send_all(item)
            last = item[-1:]
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            broken = True
    if broken:
        return
    try:
        if tty:
            # VEOF ends a read only at the start of a line: flush a partial line first.
            await stream.send_all(b"\x04" if last == b"\n" else b"\x04\x04")
        else:
            await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def run_exec(session, body, agent):
    spec = parse_exec(body, agent.base_env)
    try:
        proc, master = await _spawn(spec)
    except OSError as e:
        code, message = _start_error(spec, e)
        await session.send("exit", {"code": code, "signal": None, "timed_out": False, "error": message})
        return
    pid = proc.pid
    if master is not None:
        out = trio.lowlevel.FdStream(master)    # owns the master from now on
        # the pty master is one fd for both directions: a dup for input
        stdin = trio.lowlevel.FdStream(os.dup(master)) if spec.stdin else None
        outputs = [(out, "out")]
    else:
        stdin = proc.stdin
        outputs = [(proc.stdout, "out"), (proc.stderr, "err")]

    def on_control(typ, msg):
        if typ == "signal":
            signum = field(msg, "signum", int, required=True, where="signal")
            if not 0 < signum < 65:
                raise ProtocolError(f"signal.signum: {signum} is not a signal number")
            if proc.returncode is None:
                if field(msg, "group", bool, default=False, where="signal"):
                    _killpg(pid, signum)
                else:
                    try:
                        os.kill(pid, signum)
                    except ProcessLookupError:
                        pass
        elif typ == "resize":
            rows = field(msg, "rows", int, required=True, where="resize")
            cols = field(msg, "cols", int, required=True, where="resize")
            if master is not None and 0 < rows < 1 << 16 and 0 < cols < 1 << 16:
                try:
                    set_winsize(master, rows, cols)
                except OSError:
                    pass
        elif typ == "cancel":
            session.default_control(typ, msg)
        else:
            raise ProtocolError(f"exec session: unexpected {typ!r} message")

    session.on_control = on_control
    for typ, msg in session.take_queued_control():     # sent while the command was starting
        on_control(typ, msg)
    chunk = session.mux.chunk
    timer = trio.CancelScope()
    try:
        await session.send("started", {"pid": pid})
        if spec.timeout:
            timer.deadline = trio.current_time() + spec.timeout
        with timer:
            async with trio.open_nursery() as nursery:
                if spec.stdin:
                    nursery.start_soon(_pump_in, session, stdin, spec.tty)
                async with trio.open_nursery() as pumps:
                    for stream, ch in outputs:
                        pumps.start_soon(_pump_out, session, stream, ch, chunk)
                    await proc.wait()
                nursery.cancel_scope.cancel()   # output drained: stop waiting for stdin
        killed = timer.cancelled_caught
    except BaseException:
        killed = True
        raise
    finally:
        with trio.CancelScope(shield=True):
            # Timeout, host cancel, lost connection or a bug: the whole group goes.
            if proc.returncode is None or killed:
                _killpg(pid)
            with trio.move_on_after(KILL_GRACE):
                await proc.wait()
            for stream in (stdin, *(s for s, _ in outputs)):
                if stream is not None:
                    await stream.aclose()
    rc = proc.returncode if proc.returncode is not None else -signal.SIGKILL   # stuck in D state
    if timer.cancelled_caught:
        await session.send("exit", {"code": EXIT_TIMED_OUT, "signal": None, "timed_out": True})
    elif rc < 0:
        await session.send("exit", {"code": 128 - rc, "signal": -rc, "timed_out": False})
    else:
        await session.send("exit", {"code": rc, "signal": None, "timed_out": False})
