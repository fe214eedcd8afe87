"""The agent's second front end: hypeman's gRPC GuestService over HTTP/2 (h2, pure Python).

A small gRPC server, not grpcio: grpcio's wheel is 18.3 MB installed (a
17 MB C extension) against the initrd's ~2.3 MiB headroom, and it runs its
own threads beside trio.  gRPC over HTTP/2 is a POST per call to
/guest.GuestService/<Method> with `content-type: application/grpc`, messages
framed as 1 byte "compressed" (0: we announce no compression) + 4 bytes
big-endian length + the protobuf bytes, and the status in trailers
(`grpc-status`, `grpc-message`).  `h2` keeps the HTTP/2 state (frames, HPACK,
flow control); this module maps calls onto the agent's operations through
agent/grpc_session.py, so each operation has one implementation.

Flow control: a received message is acknowledged to HTTP/2 only when the
operation takes it, so a peer can have at most a window (64 KiB per stream
by default) buffered here; sends wait for the peer's window.
"""

import os
import urllib.parse

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio

from agent import execs, files, guest_proto, protowire
from agent.grpc_session import GrpcSession, exec_body, put_root_entry
from agent.mux import Closed
from agent.server import log

RECEIVE_SIZE = 64 << 10
MAX_MESSAGE = 4 << 20       # gRPC's default limit for a received message
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, UNIMPLEMENTED, INTERNAL = \
    0, 1, 2, 3, 5, 7, 12, 13
_ERROR_STATUS = {"invalid": INVALID_ARGUMENT, "not_found": NOT_FOUND, "permission": PERMISSION_DENIED,
                 "cancelled": CANCELLED, "internal": INTERNAL, "protocol": INVALID_ARGUMENT}
PERM = 0o777       # modes travel as permission bits only, as hypeman's agent sends them


class CallError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class Call:
    """One RPC: its inbound messages and its outbound sends."""

    def __init__(self, conn, stream_id, request_schema, response_schema):
        self.conn = conn
        self.stream_id = stream_id
        self.request_schema = request_schema
        self.response_schema = response_schema
        self.inbound_send, self.inbound = trio.open_memory_channel(float("inf"))
        self.buffer = bytearray()
        self.unacked = 0
        self.headers_sent = False
        self.reset = False
        self.error = None           # a CallError found by the reader

    def feed(self, data, flow):
        """DataReceived: split the gRPC messages out (called by the reader)."""
        self.buffer += data
        self.unacked += flow
        while len(self.buffer) >= 5:
            if self.buffer[0] != 0:
                raise CallError(UNIMPLEMENTED, "compressed messages are not supported")
            n = int.from_bytes(self.buffer[1:5], "big")
            if n > MAX_MESSAGE:
                raise CallError(INVALID_ARGUMENT, f"message of {n} bytes (limit {MAX_MESSAGE})")
            if len(self.buffer) < 5 + n:
                break
            msg, self.buffer = bytes(self.buffer[5:5 + n]), self.buffer[5 + n:]
            self.inbound_send.send_nowait((msg, self.unacked))
            self.unacked = 0

    async def receive(self):
        """The next request message (a dict), or None once the client half-closed."""
        try:
            raw, flow = await self.inbound.receive()
        except trio.EndOfChannel:
            return None
        if flow:
            self.conn.ack(self.stream_id, flow)
            await self.conn.flush()
        try:
            return protowire.decode(self.request_schema, raw, "request")
        except protowire.DecodeError as e:
            raise CallError(INVALID_ARGUMENT, str(e)) from None

    async def send(self, msg):
        if self.reset:
            raise Closed("the client cancelled the call")
        if not self.headers_sent:
            self.headers_sent = True
            self.conn.h2.send_headers(self.stream_id, [(":status", "200"), ("content-type", "application/grpc")])
        raw = protowire.encode(self.response_schema, msg)
        await self.conn.send_data(self.stream_id, len(raw).to_bytes(5, "big") + raw)

    async def finish(self, status, message=""):
        if self.reset:
            return
        trailers = [("grpc-status", str(status))]
        if message:
            trailers.append(("grpc-message", urllib.parse.quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")))
        if not self.headers_sent:   # trailers-only response
            self.headers_sent = True
            trailers = [(":status", "200"), ("content-type", "application/grpc")] + trailers
        self.conn.h2.send_headers(self.stream_id, trailers, end_stream=True)
        await self.conn.flush()

    def drain(self):
        """Acknowledge what the operation left unread (the connection's window is shared)."""
        flow = self.unacked
        while True:
            try:
                flow += self.inbound.receive_nowait()[1]
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        if flow:
            self.conn.ack(self.stream_id, flow)


class Connection:
    """One HTTP/2 connection: the reader, the writer lock, the calls."""

    def __init__(self, stream, agent):
        self.stream = stream
        self.agent = agent
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8", validate_inbound_headers=True))
        self.lock = trio.StrictFIFOLock()
        self.window_changed = trio.Event()
        self.calls = {}     # stream id -> (Call, CancelScope)
        self.gone = False

    def ack(self, stream_id, n):
        try:
            self.h2.acknowledge_received_data(n, stream_id)
        except (h2.exceptions.StreamClosedError, KeyError):
            pass

    async def flush(self):
        async with self.lock:
            data = self.h2.data_to_send()
            if data and not self.gone:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.gone = True
            if self.gone:
                raise Closed("the gRPC client disconnected")

    async def send_data(self, stream_id, data):
        view = memoryview(data)
        while view:
            n = min(len(view), self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
            if n <= 0:
                event = self.window_changed
                await self.flush()
                await event.wait()
                call = self.calls.get(stream_id)
                if self.gone or call is None or call[0].reset:
                    raise Closed("the gRPC call ended")
                continue
            self.h2.send_data(stream_id, bytes(view[:n]))
            view = view[n:]
        await self.flush()

    def _window_update(self):
        self.window_changed.set()
        self.window_changed = trio.Event()

    async def run(self, nursery):
        self.h2.initiate_connection()
        await self.flush()
        while True:
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                return
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError as e:
                log(f"gRPC: HTTP/2 protocol error, closing the connection: {e}")
                await self.flush()
                return
            for event in events:
                self._on_event(event, nursery)
            await self.flush()

    def _on_event(self, event, nursery):
        if isinstance(event, h2.events.RequestReceived):
            self._start_call(event.stream_id, dict(event.headers), nursery)
        elif isinstance(event, h2.events.DataReceived):
            entry = self.calls.get(event.stream_id)
            if entry is None:
                self.ack(event.stream_id, event.flow_controlled_length)
                return
            try:
                entry[0].feed(event.data, event.flow_controlled_length)
            except CallError as e:
                entry[0].error = e
                entry[1].cancel()
        elif isinstance(event, h2.events.StreamEnded):
            entry = self.calls.get(event.stream_id)
            if entry is not None:
                entry[0].inbound_send.close()
        elif isinstance(event, h2.events.StreamReset):
            entry = self.calls.get(event.stream_id)
            if entry is not None:
                entry[0].reset = True
                entry[1].cancel()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._window_update()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.gone = True
            self._window_update()

    def _start_call(self, stream_id, headers, nursery):
        """Registered at once: the request's data may be in the same read as its headers."""
        method = self._method(headers)
        schemas = guest_proto.METHODS.get(method)
        call = Call(self, stream_id, *(schemas[:2] if schemas else ({}, {})))
        scope = trio.CancelScope()
        self.calls[stream_id] = (call, scope)
        nursery.start_soon(self._run_call, call, scope, method, headers)

    async def _run_call(self, call, scope, method, headers):
        stream_id = call.stream_id
        schemas = guest_proto.METHODS.get(method)
        try:
            with scope:
                if schemas is None:
                    raise CallError(UNIMPLEMENTED, f"method {headers.get(':path')!r} is not served"
                                    " by Kindling's agent")
                await OPERATIONS[method](call, self.agent)
                await call.finish(OK)
            if call.error is not None:
                raise call.error
        except CallError as e:
            await self._finish_quietly(call, e.status, str(e))
        except (Closed, h2.exceptions.StreamClosedError):
            pass        # the client went away or reset the call
        except Exception as e:      # a bug: report it, keep the connection and the agent serving
            log(f"gRPC {method}: {type(e).__name__}: {e}")
            await self._finish_quietly(call, INTERNAL, f"{type(e).__name__}: {e}")
        finally:
            call.drain()
            del self.calls[stream_id]

    async def _finish_quietly(self, call, status, message):
        try:
            await call.finish(status, message)
        except (Closed, h2.exceptions.H2Error):
            pass

    @staticmethod
    def _method(headers):
        path = headers.get(":path", "")
        if headers.get(":method") != "POST" or not headers.get("content-type", "").startswith("application/grpc"):
            return None
        service, _, method = path.lstrip("/").partition("/")
        return method if service == guest_proto.SERVICE else None


# --- the operations, run by the agent's own handlers -----------------------------------------

def _raise_error(session):
    if session.result is not None and session.result[0] == "error":
        err = session.result[1]
        raise CallError(_ERROR_STATUS.get(err.get("code"), UNKNOWN), err.get("message", ""))


async def _first(call, key, method):
    msg = await call.receive()
    if msg is None or key not in msg:
        raise CallError(INVALID_ARGUMENT, f"{method}: the first message must be `{key}`")
    return msg[key]


async def op_exec(call, agent):
    start = await _first(call, "start", "Exec")
    session = GrpcSession(call, "exec")
    await agent._run_session(execs.run_exec, session, exec_body(start))
    _raise_error(session)


async def op_copy_to_guest(call, agent):
    start = await _first(call, "start", "CopyToGuest")
    session = GrpcSession(call, "put")
    session._in.append(put_root_entry(start))
    await agent._run_session(files.run_put, session, {"path": start.get("path", "")})
    typ, body = session.result or ("error", {"message": "no result"})
    if typ == "result":
        await call.send({"success": True, "bytes_written": body.get("bytes", 0)})
    else:
        await call.send({"success": False, "error": body.get("message", "")})


async def op_copy_from_guest(call, agent):
    req = await call.receive() or {}
    path = req.get("path", "")
    session = GrpcSession(call, "get")
    session._root_name = os.path.basename(path.rstrip("/")) or "/"
    await agent._run_session(files.run_get, session, {"path": path, "follow": req.get("follow_links", False)})
    if session.result is not None and session.result[0] == "error":
        await call.send({"error": {"message": session.result[1].get("message", ""), "path": path}})


async def op_stat_path(call, agent):
    req = await call.receive() or {}
    session = GrpcSession(call, "stat")
    await agent._run_session(files.run_stat, session,
                             {"path": req.get("path", ""), "follow": req.get("follow_links", False)})
    typ, info = session.result or ("error", {"message": "no result"})
    if typ == "error":
        await call.send({"error": info.get("message", "")})
        return
    await call.send({"exists": info["exists"], "is_dir": info.get("type") == "dir",
                     "is_file": info.get("type") == "file", "is_symlink": info.get("type") == "symlink",
                     "link_target": info.get("target", ""), "mode": info.get("mode", 0) & PERM,
                     "size": info.get("size", 0)})


OPERATIONS = {"Exec": op_exec, "CopyToGuest": op_copy_to_guest, "CopyFromGuest": op_copy_from_guest,
              "StatPath": op_stat_path}


async def serve_connection(stream, agent):
    """Serve one byte stream (vsock connection, virtio-serial port, socket) as gRPC."""
    conn = Connection(stream, agent)
    async with trio.open_nursery() as nursery:
        try:
            await conn.run(nursery)
        except Closed:
            pass
        conn.gone = True
        conn._window_update()
        nursery.cancel_scope.cancel()
