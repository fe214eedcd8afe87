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

import contextlib
import errno
import fcntl
import os
import signal
import struct
import subprocess
import termios

import trio

from agent import mux as muxmod
from agent import spawn
from agent.wire import ProtocolError, field
from initsys import users

EXIT_TIMED_OUT = 124
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
KILL_GRACE = 5.0
CORK_DELAY = 0.05        # seconds an exec's first frames may wait to share one write
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
    """(Child, pty master fd or None)."""
    kwargs = {"env": spec.env, "cwd": spec.cwd, "start_new_session": True}
    user = None
    if spec.user is not None:
        uid, gid, extra, home = resolve_user(spec.user)
        user = (uid, gid, extra)
        if home and not spec.home_given:
            spec.env["HOME"] = home
    if not spec.tty:
        proc = await spawn.start(spec.argv, stdin=subprocess.PIPE if spec.stdin else subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, user=user, **kwargs)
        return proc, None
    master, slave = os.openpty()
    os.set_inheritable(master, False)
    try:
        set_winsize(master, spec.rows, spec.cols)
        if user is not None:
            os.fchown(slave, user[0], -1)
        spec.env.setdefault("TERM", "xterm")
        proc = await spawn.start(spec.argv, stdin=slave, stdout=slave, stderr=slave,
                                 preexec_fn=_take_controlling_tty, user=user, **kwargs)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
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
    """One output stream to its channel, until EOF (the caller sends the channel's eof)."""
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


def _control_handler(session, proc, master):
    """The session's on_control while the command runs: signal, resize, cancel."""
    pid = proc.pid

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

    return on_control


async def _uncork_after(session, delay):
    """A command still running after `delay` gets what it has sent so far (started, first
    output) and its output streamed from then on."""
    await trio.sleep(delay)
    await session.uncork()


async def _supervise(session, spec, proc, stdin, outputs):
    """Stream stdio until the command ends and its output is drained; kill its group on a
    timeout, cancel or error.  Returns (returncode, timed_out, drained)."""
    timer = trio.CancelScope()
    drained = False
    try:
        if spec.timeout:
            timer.deadline = trio.current_time() + spec.timeout
        with timer:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_uncork_after, session, CORK_DELAY)
                if spec.stdin:
                    nursery.start_soon(_pump_in, session, stdin, spec.tty)
                async with trio.open_nursery() as pumps:
                    for stream, ch in outputs:
                        pumps.start_soon(_pump_out, session, stream, ch, session.mux.chunk)
                    await proc.wait()
                drained = True
                nursery.cancel_scope.cancel()   # stop waiting for stdin and the cork timer
        killed = timer.cancelled_caught
    except BaseException:
        killed = True
        raise
    finally:
        with trio.CancelScope(shield=True):
            # Timeout, host cancel, lost connection or a bug: the whole group goes.
            if proc.returncode is None or killed:
                _killpg(proc.pid)
            with trio.move_on_after(KILL_GRACE):
                await proc.wait()
            proc.close()
            for stream in (stdin, *(s for s, _ in outputs)):
                if stream is not None:
                    await stream.aclose()
    rc = proc.returncode if proc.returncode is not None else -signal.SIGKILL   # stuck in D state
    return rc, timer.cancelled_caught, drained


def _exit_body(rc, timed_out):
    if timed_out:
        return {"code": EXIT_TIMED_OUT, "signal": None, "timed_out": True}
    if rc < 0:
        return {"code": 128 - rc, "signal": -rc, "timed_out": False}
    return {"code": rc, "signal": None, "timed_out": False}


async def run_exec(session, body, agent):
    """The exec operation.  Its frames are corked (agent/mux.py): a command that ends within
    CORK_DELAY costs one write for started, output, eofs and exit; a longer one gets
    started and its output from CORK_DELAY on, and its eofs and exit in one write."""
    spec = parse_exec(body, agent.base_env)
    try:
        proc, master = await _spawn(spec)
    except OSError as e:
        code, message = _start_error(spec, e)
        await session.send("exit", {"code": code, "signal": None, "timed_out": False, "error": message})
        return
    if master is not None:
        out = trio.lowlevel.FdStream(master)    # owns the master from now on
        # the pty master is one fd for both directions: a dup for input
        stdin = trio.lowlevel.FdStream(os.dup(master)) if spec.stdin else None
        outputs = [(out, "out")]
    else:
        stdin = proc.stdin
        outputs = [(proc.stdout, "out"), (proc.stderr, "err")]
    session.on_control = _control_handler(session, proc, master)
    for typ, msg in session.take_queued_control():     # sent while the command was starting
        session.on_control(typ, msg)
    session.cork()
    try:
        await session.send("started", {"pid": proc.pid})
        rc, timed_out, drained = await _supervise(session, spec, proc, stdin, outputs)
        session.cork()      # the tail: eofs and exit in one write
        if drained:
            for _, ch in outputs:
                await session.send_eof(ch)
        await session.send("exit", _exit_body(rc, timed_out))
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(KILL_GRACE), contextlib.suppress(muxmod.Closed):
            await session.uncork()
