"""The agent's side of a connection: hello, sessions, errors, resets.

serve_stream() runs one byte stream.  It hunts for MAGIC, answers the
hello, then runs a Mux until the host disconnects (the stream ends), starts
over (a new MAGIC), or breaks the protocol (an error frame, then hunting).
Whatever ends a connection ends its sessions: their commands' process groups
are killed and half-written files removed.  A new connection starts clean.
"""

import errno
import os

import trio

from agent import execs, files, memory, sync, wire
from agent.mux import Closed, Mux
from agent.wire import ProtocolError, field

MAX_SESSIONS = 128
ERROR_SEND_TIMEOUT = 5.0

_ERRNO_CODES = {errno.ENOENT: "not_found", errno.ENOTDIR: "not_found", errno.EACCES: "permission",
                errno.EPERM: "permission", errno.EEXIST: "exists", errno.EISDIR: "exists",
                errno.ENOTEMPTY: "exists", errno.ENOSPC: "no_space", errno.EDQUOT: "no_space"}


def log(message):
    try:
        os.write(2, f"kindling-agent: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass


class Agent:
    """Serves connections; `shutdown` sets `stopping`."""

    def __init__(self, base_env=None, *, window=wire.WINDOW, max_frame=wire.MAX_FRAME):
        if base_env is None:
            base_env = {k: v for k, v in os.environ.items() if not k.startswith("KINDLING_READY_")}
        self.base_env = base_env
        self.window = window
        self.max_frame = max_frame
        self.stopping = trio.Event()
        self.copies = {files.run_put, files.run_get, sync.run_sync}   # memory.release() after each
        self.ops = {"exec": execs.run_exec, "stat": files.run_stat, "put": files.run_put,
                    "get": files.run_get, "sync": sync.run_sync, "shutdown": self._shutdown}

    async def _shutdown(self, session, body, agent):
        try:
            await session.send("result", {})
        finally:
            self.stopping.set()

    # --- one byte stream -------------------------------------------------------

    async def serve_stream(self, stream):
        decoder = wire.Decoder(wire.AGENT_LIMITS)
        after_magic = False
        while True:
            hello = await self._await_hello(stream, decoder, after_magic)
            if hello is None:
                return
            nonce, peer_window, peer_max_frame = hello
            mux = Mux(stream, decoder, inbound=("in",), window=self.window,
                      peer_window=peer_window, peer_max_frame=peer_max_frame)
            try:
                await stream.send_all(wire.MAGIC + wire.encode(
                    wire.agent_hello(nonce, window=self.window, max_frame=self.max_frame, ops=self.ops)))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            outcome = await self._run_mux(stream, mux)
            if outcome == "eof":
                return
            after_magic = outcome == "reset"

    async def _await_hello(self, stream, decoder, after_magic):
        """Hunt for MAGIC + hello; answer bad hellos with an error.  None at EOF."""
        while True:
            try:
                msg = decoder.next()
            except ProtocolError as e:
                await self._send_error(stream, 0, "protocol", str(e))
                after_magic = False
                continue
            if msg is None:
                try:
                    data = await stream.receive_some(wire.RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
                if not data:
                    return None
                decoder.feed(data)
                continue
            if msg is wire.RESET:
                after_magic = True
                continue
            if not after_magic:
                continue
            try:
                if msg[0] != "hello" or len(msg) != 3:
                    raise ProtocolError(f"expected a hello after MAGIC, got {msg[0]!r}")
                body = msg[2]
                versions = field(body, "versions", list, required=True, where="hello")
                nonce = field(body, "nonce", bytes, required=True, where="hello")
                if len(nonce) != wire.NONCE_LEN:
                    raise ProtocolError(f"hello.nonce: expected {wire.NONCE_LEN} bytes")
                if wire.PROTOCOL_VERSION not in versions:
                    await self._send_error(stream, 0, "version",
                                           f"no common protocol version: host speaks {versions},"
                                           f" agent speaks {list(wire.SUPPORTED_VERSIONS)}",
                                           versions=list(wire.SUPPORTED_VERSIONS), nonce=nonce)
                    decoder.hunt()
                    after_magic = False
                    continue
                window, max_frame = wire.peer_params(body, "hello")
            except ProtocolError as e:
                await self._send_error(stream, 0, "protocol", str(e))
                decoder.hunt()
                after_magic = False
                continue
            return nonce, window, max_frame

    async def _send_error(self, stream, sid, code, message, **extra):
        frame = wire.encode(["error", sid, {"code": code, "message": message, **extra}])
        if sid == 0:
            frame = wire.MAGIC + frame
        with trio.move_on_after(ERROR_SEND_TIMEOUT):
            try:
                await stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _run_mux(self, stream, mux):
        pending_rejects = 0

        async with trio.open_nursery() as epoch:
            async def reject(sid, code, message):
                nonlocal pending_rejects
                try:
                    await mux.send_frame(wire.encode(["error", sid, {"code": code, "message": message}]))
                except Closed:
                    pass
                finally:
                    pending_rejects -= 1

            def on_open(sid, body):
                nonlocal pending_rejects
                op = body.get("op")
                handler = self.ops.get(op) if isinstance(op, str) else None
                if handler is None or len(mux.sessions) >= MAX_SESSIONS or self.stopping.is_set():
                    if pending_rejects >= MAX_SESSIONS:
                        raise ProtocolError("too many refused sessions")
                    pending_rejects += 1
                    if handler is None:
                        epoch.start_soon(reject, sid, "unsupported", f"open.op: unknown operation {op!r}")
                    elif self.stopping.is_set():
                        epoch.start_soon(reject, sid, "busy", "the agent is shutting down")
                    else:
                        epoch.start_soon(reject, sid, "busy", f"more than {MAX_SESSIONS} sessions")
                    return
                session = mux.new_session(sid)
                epoch.start_soon(self._run_session, handler, session, body)

            def on_connection(typ, body):
                if typ == "error":
                    log(f"host reported: {body.get('code')}: {body.get('message')}")
                    return
                raise ProtocolError(f"unexpected {typ!r} frame on session 0")

            mux.on_open = on_open
            mux.on_connection = on_connection
            try:
                outcome = await mux.run()
            except ProtocolError as e:
                log(f"protocol error, resetting the connection: {e}")
                mux.decoder.hunt()
                await self._send_error(stream, 0, "protocol", str(e))
                outcome = "error"
            epoch.cancel_scope.cancel()
        return outcome

    async def _run_session(self, handler, session, body):
        scope = trio.CancelScope()

        def default_control(typ, msg):
            if typ == "cancel":
                scope.cancel()
            else:   # e.g. a signal for an exec that is still starting: its handler takes it
                session.queue_control(typ, msg)

        session.default_control = default_control
        session.on_control = default_control
        error = None
        try:
            with scope:
                await handler(session, body, self)
            if scope.cancelled_caught:
                error = {"code": "cancelled", "message": "cancelled by the host"}
        except execs.RequestError as e:
            error = {"code": e.code, "message": str(e)}
            if e.field:
                error["field"] = e.field
        except ProtocolError as e:
            error = {"code": e.code, "message": str(e)}
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            error = {"code": _ERRNO_CODES.get(e.errno, "io"), "message": f"{where}{e.strerror or e}"}
            if e.errno:
                error["errno"] = e.errno
        except Closed:
            pass
        except Exception as e:      # a bug: report it, keep serving
            log(f"session {session.sid} ({body.get('op')}): {type(e).__name__}: {e}")
            error = {"code": "internal", "message": f"{type(e).__name__}: {e}"}
        try:
            if error is not None and not session.closed:
                await session.send("error", error)
        except Closed:
            pass
        finally:
            session.close()
            if handler in self.copies:
                memory.release()


async def serve(transport, agent, handler=None, *, task_status=trio.TASK_STATUS_IGNORED):
    """Serve a transport that is already open until a shutdown request.
    handler: what runs each connection (default: agent.serve_stream)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(transport.run, handler or agent.serve_stream)
        task_status.started()
        await agent.stopping.wait()
        nursery.cancel_scope.cancel()
