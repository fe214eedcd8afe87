"""Host side of the agent protocol (docs/agent-protocol.md): exec, copy, stat, shutdown.

    async with open_agent(socket_path, timeout=10) as agent:
        result = await agent.exec(["uname", "-r"])
        await agent.copy_to("./data", "/srv/data")
        info = await agent.stat("/srv/data")

The socket is QEMU's end of the virtio-serial port (`-chardev socket,path=S,
server=on,wait=off,id=c0 -device virtserialport,chardev=c0,
name=org.kindling.agent.0`) or an agent's unix socket.

**The guest is untrusted.**  Everything read from it goes through the bounded
decoder (frame size limits, 64 KiB control frames, flow-control credit that
the host grants only as it consumes), every field is type-checked before use,
captured output has a limit (max_capture), and trees copied from the guest
are written by agent.files.TreeWriter: names with '..', absolute names and
writing through symlinks are refused, setuid/setgid bits are dropped, and
ownership is not copied.  A guest that breaks these rules gets
AgentProtocolError and its connection closed.

Timeouts belong to the call site (`with trio.fail_after(...)`), except the
connection's hello, which open_agent bounds with its required `timeout`.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

import trio

from agent import files, wire
from agent.mux import EOF, Closed, Mux
from agent.wire import ProtocolError, field

from .errors import KindlingError, kindling_error_in

DEFAULT_MAX_CAPTURE = 64 << 20
TERMINAL = ("exit", "result", "error")
CANCEL_TIMEOUT = 5.0


class AgentError(KindlingError):
    """Talking to the agent failed (connection, hello, a lost connection)."""


class AgentProtocolError(AgentError):
    """The guest broke the protocol or sent something unsafe (e.g. a '..' name)."""


class ConnectionLost(AgentError):
    """The connection ended under a request: the peer disconnected (on virtio-serial: QEMU
    went away) or a send failed."""


def agent_error_in(caught: BaseException) -> AgentError | None:
    """The AgentError that `caught` is, or that a client's nursery wrapped alone in a
    group; None for anything else (the caller re-raises it)."""
    if isinstance(caught, BaseExceptionGroup):
        caught = kindling_error_in(caught)
    return caught if isinstance(caught, AgentError) else None


class RemoteError(AgentError):
    """The agent refused or failed a request: `code` (not_found, permission, invalid, ...)."""

    def __init__(self, code, message, field_name=None):
        super().__init__(f"agent: {message}" + (f" (field {field_name})" if field_name else ""))
        self.code = code
        self.field = field_name


@dataclass(frozen=True)
class ExecResult:
    code: int
    signal: int | None = None
    timed_out: bool = False
    error: str | None = None          # set when the command could not start (126/127)
    stdout: bytes = b""
    stderr: bytes = b""


@dataclass(frozen=True)
class StatResult:
    exists: bool
    type: str | None = None
    mode: int | None = None
    size: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime_ns: int | None = None
    target: str | None = None


@dataclass(frozen=True)
class CopyResult:
    entries: int
    bytes: int
    skipped: int = 0


@dataclass(frozen=True)
class SyncResult:
    clock_step_ns: int        # the guest's new time minus its time just before the step
    entropy_bytes: int        # credited to the kernel's pool ...
    entropy_bits: int
    reseeded: bool            # ... and the CRNG reseeded from it


def _remote_error(body):
    try:
        code = field(body, "code", str, default="unknown", where="error")
        message = field(body, "message", str, default="(no message)", where="error")
        fname = field(body, "field", str, where="error")
    except ProtocolError as e:
        return AgentProtocolError(f"malformed error from the agent: {e}")
    return RemoteError(code, message[:4096], fname)


def _checked(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ProtocolError as e:
        raise AgentProtocolError(f"the agent sent an invalid message: {e}") from None


async def _drain(proc, ch: str, sink, buf: bytearray, max_capture: int, name: str) -> None:
    """One output channel of an exec: to `sink`, or captured into `buf` (bounded)."""
    while data := await proc.receive(ch):
        if sink is not None:
            await sink(data)
            continue
        if len(buf) + len(data) > max_capture:
            stream = "stdout" if ch == "out" else "stderr"
            raise AgentError(f"{stream} of {name} exceeded {max_capture} bytes;"
                             f" pass {stream}= to stream it")
        buf += data


async def _feed(proc, stdin) -> None:
    """An exec's stdin: bytes or an async iterable of bytes, then end of input."""
    try:
        if isinstance(stdin, (bytes, bytearray, memoryview)):
            if stdin:
                await proc.send_stdin(bytes(stdin))
        else:
            async for chunk in stdin:
                await proc.send_stdin(chunk)
    except AgentError:
        return      # the command ended before reading all of it
    await proc.close_stdin()


class ExecProcess:
    """A running command.  Get one from AgentClient.open_exec()."""

    def __init__(self, client, session, tty):
        self._client = client
        self._session = session
        self.tty = tty
        self.pid = None
        self.result = None

    async def send_stdin(self, data):
        """Stream bytes to the command's stdin (needs stdin=True); waits for credit."""
        try:
            await self._session.send_data("in", data)
        except Closed:
            self._client._check_connection()
            raise AgentError("the command has ended; its stdin is closed") from None

    async def close_stdin(self):
        with contextlib.suppress(Closed):
            await self._session.send_eof("in")

    async def receive(self, ch="out"):
        """The next bytes of stdout ("out") or stderr ("err"); b"" at the end."""
        try:
            item = await self._session.receive(ch)
        except Closed:
            self._client._check_connection()
            return b""
        if item is EOF:
            return b""
        if not isinstance(item, bytes):
            raise AgentProtocolError(f"exec: an entry frame on channel {ch!r}")
        return item

    async def signal(self, signum, *, group=False):
        with contextlib.suppress(Closed):
            await self._session.send("signal", {"signum": int(signum), "group": bool(group)})

    async def resize(self, rows, cols):
        with contextlib.suppress(Closed):
            await self._session.send("resize", {"rows": int(rows), "cols": int(cols)})

    async def cancel(self):
        with contextlib.suppress(Closed):
            await self._session.send("cancel", {})

    async def wait(self):
        """Wait for the command to end: ExecResult (without captured output)."""
        while self.result is None:
            try:
                typ, body = await self._session.next_control()
            except Closed:
                self._client._check_connection()
                raise AgentError("the exec session ended without an exit status") from None
            if typ == "started":
                pid = _checked(field, body, "pid", int, required=True, where="started")
                self.pid = pid
            elif typ == "exit":
                self.result = ExecResult(
                    code=_checked(field, body, "code", int, required=True, where="exit"),
                    signal=_checked(field, body, "signal", int, where="exit"),
                    timed_out=_checked(field, body, "timed_out", bool, default=False, where="exit"),
                    error=_checked(field, body, "error", str, where="exit"))
            elif typ == "error":
                raise _remote_error(body)
            else:
                raise AgentProtocolError(f"exec: unexpected {typ!r} message from the agent")
        return self.result


class AgentClient:
    """One connection to an agent.  Use open_agent()."""

    def __init__(self, mux, nursery):
        self._mux = mux
        self._nursery = nursery
        self._next_sid = 1
        self.lost = None

    def _check_connection(self):
        if self._mux.closed:
            if self.lost:
                raise AgentProtocolError(f"connection to the agent lost: {self.lost}")
            raise ConnectionLost(f"connection to the agent lost: {self._mux.closed}")

    async def _open(self, body):
        self._check_connection()
        sid = self._next_sid
        self._next_sid += 1
        session = self._mux.new_session(sid)
        try:
            await session.send("open", body)
        except Closed:
            self._check_connection()
            raise
        return session

    async def _terminal(self, session, what):
        """The session's result body; raises RemoteError for an error."""
        while True:
            try:
                typ, body = await session.next_control()
            except Closed:
                self._check_connection()
                raise AgentError(f"{what}: the session ended without a result") from None
            if typ == "result":
                return body
            if typ == "error":
                raise _remote_error(body)
            raise AgentProtocolError(f"{what}: unexpected {typ!r} message from the agent")

    async def _abandon(self, session):
        with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_TIMEOUT):
            if session.finished is None and not session.closed:
                with contextlib.suppress(Closed):
                    await session.send("cancel", {})
        session.close()

    # --- exec -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open_exec(self, argv, *, env=None, cwd=None, user=None, stdin=False, tty=False,
                        rows=24, cols=80, timeout=None):
        """Start a command; yields an ExecProcess.  Leaving early cancels it (the agent
        kills its process group)."""
        if isinstance(argv, (str, bytes)):
            raise TypeError("argv must be a list of arguments, not a string")
        body = {"op": "exec", "argv": [os.fsdecode(a) for a in argv], "tty": bool(tty),
                "stdin": bool(stdin), "rows": int(rows), "cols": int(cols)}
        if env:
            body["env"] = dict(env)
        if cwd is not None:
            body["cwd"] = os.fsdecode(cwd)
        if user is not None:
            body["user"] = user
        if timeout is not None:
            body["timeout"] = float(timeout)
        session = await self._open(body)
        proc = ExecProcess(self, session, tty)
        try:
            yield proc
        finally:
            await self._abandon(session)

    async def exec(self, argv, *, env=None, cwd=None, user=None, stdin=None, tty=False, rows=24,
                   cols=80, timeout=None, stdout=None, stderr=None, max_capture=DEFAULT_MAX_CAPTURE):
        """Run a command to completion.

        stdin: None (the command reads /dev/null, or nothing in TTY mode), bytes, or an
        async iterable of bytes.  stdout/stderr: None to capture (at most max_capture
        bytes each, else AgentError), or an async callable receiving each chunk.
        In TTY mode stderr is merged into stdout.
        """
        captured = {"out": bytearray(), "err": bytearray()}
        async with self.open_exec(argv, env=env, cwd=cwd, user=user, stdin=stdin is not None,
                                  tty=tty, rows=rows, cols=cols, timeout=timeout) as proc:
            async def drain(ch, sink):
                await _drain(proc, ch, sink, captured[ch], max_capture, argv[0])

            async def feed():
                await _feed(proc, stdin)

            failure = None
            async with trio.open_nursery() as nursery:
                def fail(e):
                    nonlocal failure
                    failure = failure or e
                    nursery.cancel_scope.cancel()

                async def guarded(fn, *args):
                    try:
                        await fn(*args)
                    except AgentError as e:
                        fail(e)

                if stdin is not None:
                    nursery.start_soon(guarded, feed)
                nursery.start_soon(guarded, drain, "out", stdout)
                if not tty:
                    nursery.start_soon(guarded, drain, "err", stderr)
                try:
                    result = await proc.wait()
                except AgentError as e:
                    fail(e)
            if failure is not None:
                raise failure
        return ExecResult(result.code, result.signal, result.timed_out, result.error,
                          bytes(captured["out"]), bytes(captured["err"]))

    # --- files ----------------------------------------------------------------

    async def stat(self, path, *, follow=False):
        session = await self._open({"op": "stat", "path": os.fsdecode(path), "follow": bool(follow)})
        try:
            body = await self._terminal(session, f"stat {path}")
        finally:
            await self._abandon(session)
        exists = _checked(field, body, "exists", bool, required=True, where="stat")
        if not exists:
            return StatResult(False)
        return StatResult(
            True,
            type=_checked(field, body, "type", str, required=True, where="stat"),
            mode=_checked(field, body, "mode", int, where="stat"),
            size=_checked(field, body, "size", int, where="stat"),
            uid=_checked(field, body, "uid", int, where="stat"),
            gid=_checked(field, body, "gid", int, where="stat"),
            mtime_ns=_checked(field, body, "mtime_ns", int, where="stat"),
            target=_checked(field, body, "target", str, where="stat"))

    async def copy_to(self, local, remote, *, owner=False, follow=True):
        """Copy a local file or tree so that it becomes `remote` in the guest.

        Files are replaced atomically; modes, mtimes and symlinks are kept; uid/gid
        only with owner=True.  A local root symlink is followed unless follow=False.
        """
        local = os.fspath(local)
        session = await self._open({"op": "put", "path": os.fsdecode(remote)})
        try:
            try:
                entries, nbytes, skipped = await files.send_tree(
                    session, "in", local, follow_root=follow, owner=owner)
                await session.send_eof("in")
            except Closed:
                skipped = 0     # the agent ended the session early: its error says why
            body = await self._terminal(session, f"copy to {remote}")
        finally:
            await self._abandon(session)
        return CopyResult(_checked(field, body, "entries", int, default=0, where="result"),
                          _checked(field, body, "bytes", int, default=0, where="result"), skipped)

    async def copy_from(self, remote, local, *, follow=True, max_bytes=None, max_entries=None):
        """Copy a guest file or tree so that it becomes `local` on the host.

        The guest is untrusted: see the module docstring.  max_bytes/max_entries
        bound what it may write (None: no bound).
        """
        session = await self._open({"op": "get", "path": os.fsdecode(remote), "follow": bool(follow)})
        writer = files.TreeWriter(os.fspath(local), owner=False, keep_setid=False,
                                  max_bytes=max_bytes, max_entries=max_entries)
        try:
            try:
                entries, nbytes = await files.receive_tree(session, "out", writer)
            except ProtocolError as e:
                if session.finished is not None and session.finished[0] == "error":
                    raise _remote_error(session.finished[1]) from None
                raise AgentProtocolError(f"copy from {remote}: refused what the guest sent: {e}") from None
            except Closed:
                self._check_connection()
                raise
            except OSError as e:
                raise AgentError(f"copy from {remote}: writing {e.filename or local}: {e.strerror or e}") from None
            body = await self._terminal(session, f"copy from {remote}")
        finally:
            await self._abandon(session)
        return CopyResult(entries, nbytes, _checked(field, body, "skipped", int, default=0, where="result"))

    async def sync(self, entropy: bytes) -> SyncResult:
        """Set the guest's CLOCK_REALTIME to the host's and add `entropy` to its kernel RNG
        (credited, then a forced reseed): the `sync` operation, sent after a restore.
        The host's time is read as the request is built, right before it is sent."""
        session = await self._open({"op": "sync", "time_ns": time.time_ns(), "entropy": bytes(entropy)})
        try:
            body = await self._terminal(session, "sync")
        finally:
            await self._abandon(session)
        return SyncResult(
            clock_step_ns=_checked(field, body, "clock_step_ns", int, required=True, where="sync"),
            entropy_bytes=_checked(field, body, "entropy_bytes", int, required=True, where="sync"),
            entropy_bits=_checked(field, body, "entropy_bits", int, required=True, where="sync"),
            reseeded=_checked(field, body, "reseeded", bool, required=True, where="sync"))

    async def shutdown(self):
        """Ask the agent to stop serving (it exits; its running commands are killed)."""
        session = await self._open({"op": "shutdown"})
        try:
            await self._terminal(session, "shutdown")
        finally:
            await self._abandon(session)


async def _handshake(stream, decoder, nonce):
    """Send MAGIC + hello; hunt for the agent's MAGIC + hello carrying our nonce.

    Bytes before it (the tail of a previous host's connection on virtio-serial)
    are discarded by the decoder, a bounded amount at a time.
    """
    await stream.send_all(wire.MAGIC + wire.encode(wire.client_hello(nonce)))
    after_magic = False
    last_error = None
    while True:
        try:
            msg = decoder.next()
        except ProtocolError:
            after_magic = False
            continue
        if msg is None:
            try:
                data = await stream.receive_some(wire.RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                data = b""
                last_error = last_error or str(e)
            if not data:
                raise AgentError("the agent closed the connection during the hello"
                                 + (f" ({last_error})" if last_error else ""))
            decoder.feed(data)
            continue
        if msg is wire.RESET:
            after_magic = True
            continue
        if not after_magic or len(msg) != 3 or not isinstance(msg[2], dict):
            after_magic = False
            continue
        typ, body = msg[0], msg[2]
        if typ == "error" and body.get("nonce") == nonce:
            raise _remote_error(body)
        if typ == "error":
            last_error = str(body.get("message"))[:200]
        if typ != "hello" or body.get("nonce") != nonce:
            after_magic = False
            continue
        version = _checked(field, body, "version", int, required=True, where="hello")
        if version not in wire.SUPPORTED_VERSIONS:
            raise AgentProtocolError(f"the agent chose protocol version {version}; this host speaks"
                                     f" {list(wire.SUPPORTED_VERSIONS)}")
        return _checked(wire.peer_params, body, "hello")


HELLO_RETRY_FIRST = 0.5      # seconds for the first hello before reconnecting (answers take 3-60 ms under TCG)
RECONNECT_PAUSE = 0.2        # long enough for the agent to see the disconnect (~50 ms under TCG)


@contextlib.asynccontextmanager
async def open_agent(path, *, timeout, window=wire.WINDOW):
    """Connect to the agent behind a unix socket and say hello (bounded by timeout)."""
    path = os.fspath(path)

    async def connect():
        try:
            return await trio.open_unix_socket(path)
        except OSError as e:
            raise AgentError(f"cannot connect to the agent at {path}: {e.strerror or e}") from None

    async with open_agent_via(connect, timeout=timeout, window=window, name=path) as client:
        yield client


@contextlib.asynccontextmanager
async def open_agent_via(connect, *, timeout, window=wire.WINDOW, name="the agent"):
    """Connect (`await connect()` returns a trio stream) and say hello, reconnecting
    when a hello goes unanswered.

    Why reconnect: on virtio-serial a host that died in the middle of a frame and a
    new host that connects at once look like one stream to the agent, which then
    reads the new MAGIC as the rest of the old frame.  Disconnecting for a moment
    lets the agent see the end of the connection and start over.  Attempts get 0.5 s,
    1 s, 2 s, ... for their hello; `timeout` bounds the whole.
    """
    try:
        with trio.fail_after(timeout):
            attempt = HELLO_RETRY_FIRST
            while True:
                stream = await connect()
                decoder = wire.Decoder(wire.CLIENT_LIMITS)
                try:
                    with trio.move_on_after(attempt):
                        params = await _handshake(stream, decoder, wire.new_nonce())
                        break
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
                await trio.aclose_forcefully(stream)
                await trio.sleep(RECONNECT_PAUSE)
                attempt *= 2
    except trio.TooSlowError:
        raise AgentError(f"{name} did not answer the hello within {timeout:g} s",
                         hint="is the VM Running and its agent started?") from None
    async with _client(stream, decoder, params, window) as client:
        yield client


@contextlib.asynccontextmanager
async def open_agent_stream(stream, *, timeout, window=wire.WINDOW, name="the agent"):
    """Say hello over a connected trio stream (bounded by timeout); yields an AgentClient.

    Owns the stream: closes it on exit.
    """
    decoder = wire.Decoder(wire.CLIENT_LIMITS)
    try:
        with trio.fail_after(timeout):
            params = await _handshake(stream, decoder, wire.new_nonce())
    except BaseException as e:
        await trio.aclose_forcefully(stream)
        if isinstance(e, trio.TooSlowError):
            raise AgentError(f"{name} did not answer the hello within {timeout:g} s",
                             hint="is the VM Running and its agent started?") from None
        raise
    async with _client(stream, decoder, params, window) as client:
        yield client


@contextlib.asynccontextmanager
async def _client(stream, decoder, params, window):
    peer_window, peer_max_frame = params
    mux = Mux(stream, decoder, inbound=("out", "err"), window=window, peer_window=peer_window,
              peer_max_frame=peer_max_frame, terminal=TERMINAL)

    def on_connection(typ, body):
        if typ != "error":
            raise ProtocolError(f"unexpected {typ!r} frame on session 0")
        mux.close(f"the agent reported: {_remote_error(body)}")

    mux.on_connection = on_connection
    try:
        async with trio.open_nursery() as nursery:
            client = AgentClient(mux, nursery)

            async def reader():
                try:
                    await mux.run()
                except ProtocolError as e:
                    client.lost = f"the guest broke the protocol: {e}"

            nursery.start_soon(reader)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()
    finally:
        mux.close("closed by the host")
        await trio.aclose_forcefully(stream)


__all__ = ["AgentClient", "AgentError", "AgentProtocolError", "ConnectionLost", "CopyResult", "ExecProcess",
           "ExecResult", "RemoteError", "StatResult", "SyncResult", "open_agent", "open_agent_stream", "open_agent_via"]
