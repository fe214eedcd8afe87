"""Many sessions over one byte stream, with per-channel credit flow control.

One task (Mux.run) reads frames and dispatches them *synchronously*: it never
waits for a session, so one slow consumer cannot stall the others.  What it
may queue is bounded by credit: a sender may have at most the receiver's
window (announced in the hello) of `data`/`entry` frame bytes, length prefix
included, outstanding per (session, channel); the receiver returns credit as
its consumer takes items.  A peer that sends beyond its credit is broken (a
ProtocolError ends the connection).  Session control messages (signal,
resize, cancel on the agent; started, exit, result, error on the host) are
handled at once by the session's `on_control` callback or queued up to
MAX_CONTROL_QUEUE.  Frames for sessions that no longer exist are dropped.

Senders share the stream under one FIFO lock, a frame at a time, so data
frames of different sessions interleave fairly.  A session may be *corked*
(Session.cork): its frames then collect in order and go out as one write at
uncork() -- e.g. a short exec's started, output, eof and exit frames, which
would otherwise cost one virtio-serial write (a VM exit under TCG) each.
Corked bytes are bounded (CORK_LIMIT) and flushed before waiting for credit,
so corking never holds back what the peer needs to grant more.  Both the agent and the host
client use this class; `inbound` says which channels the peer may send on.
"""

from collections import deque

import trio

from agent import wire
from agent.wire import ProtocolError

MAX_CONTROL_QUEUE = 16
CORK_LIMIT = 64 << 10       # corked bytes that force a flush


class Closed(Exception):
    """The session or the whole connection is gone."""


class _Eof:
    __slots__ = ()

    def __repr__(self):
        return "EOF"


EOF = _Eof()


class _InChannel:
    __slots__ = ("items", "used", "unacked", "eof")

    def __init__(self):
        self.items = deque()
        self.used = 0
        self.unacked = 0
        self.eof = False


class SessionBase:
    """What every session of an operation (agent/execs.py, agent/files.py) is: a mux
    Session below, or agent/grpc_session.py's GrpcSession.  Corking is batching, which
    a session without its own frames does without: cork/uncork do nothing here."""

    def cork(self):
        """Hold this session's output back until uncork() (here: nothing to hold)."""

    async def uncork(self):
        """Send what cork() held back (here: nothing)."""


class Session(SessionBase):
    """One exec/copy/stat: inbound channels, send credit, a control queue."""

    def __init__(self, mux, sid):
        self.mux = mux
        self.sid = sid
        self._in = {}
        self._credit = {}
        self._lot = trio.lowlevel.ParkingLot()
        self._control = deque()
        self.on_control = None
        self.default_control = None
        self.finished = None        # the terminal message (exit/result/error), client side
        self.closed = False
        self._corked = None         # frames held back while corked (a list), else None
        self._corked_bytes = 0

    # --- receiving (called by Mux.run, synchronously) ---

    def _channel(self, ch):
        chan = self._in.get(ch)
        if chan is None:
            chan = self._in[ch] = _InChannel()
        return chan

    def _push(self, ch, item, cost):
        if self.finished is not None:
            raise ProtocolError(f"session {self.sid}: data on channel {ch!r} after {self.finished[0]!r}")
        chan = self._channel(ch)
        if chan.eof:
            raise ProtocolError(f"session {self.sid}: data on channel {ch!r} after its eof")
        if chan.used + cost > self.mux.window:
            raise ProtocolError(f"session {self.sid}: flow control violated on channel {ch!r}"
                                f" ({chan.used + cost} bytes outstanding, window {self.mux.window})")
        chan.items.append((item, cost))
        chan.used += cost
        self._lot.unpark_all()

    def _push_eof(self, ch):
        chan = self._channel(ch)
        if chan.eof:
            raise ProtocolError(f"session {self.sid}: second eof on channel {ch!r}")
        chan.eof = True
        chan.items.append((EOF, 0))
        self._lot.unpark_all()

    def _add_credit(self, ch, n):
        credit = self._credit.get(ch, self.mux.peer_window) + n
        if credit > 1 << 40:
            raise ProtocolError(f"session {self.sid}: credit overflow on channel {ch!r}")
        self._credit[ch] = credit
        self._lot.unpark_all()

    def _on_control(self, typ, body):
        if typ in self.mux.terminal:
            if self.finished is not None:
                raise ProtocolError(f"session {self.sid}: {typ!r} after {self.finished[0]!r}")
            self.finished = (typ, body)
            self._lot.unpark_all()
        if self.on_control is not None:
            self.on_control(typ, body)
            return
        self.queue_control(typ, body)

    def queue_control(self, typ, body):
        """Keep a control message for the session to take with next_control() (bounded)."""
        if len(self._control) >= MAX_CONTROL_QUEUE:
            raise ProtocolError(f"session {self.sid}: more than {MAX_CONTROL_QUEUE} queued {typ!r} messages")
        self._control.append((typ, body))
        self._lot.unpark_all()

    # --- the session's side ---

    async def _park(self):
        if self.closed:
            raise Closed(f"session {self.sid} closed: {self.mux.closed or 'ended'}")
        await self._lot.park()

    async def receive(self, ch):
        """Next item on an inbound channel: bytes (data), a dict (entry) or EOF.

        EOF also once the peer ended the session (exit/result/error) and
        everything it sent before has been taken.
        """
        chan = self._channel(ch)
        while not chan.items:
            if self.finished is not None:
                return EOF
            await self._park()
        item, cost = chan.items.popleft()
        if cost:
            chan.used -= cost
            chan.unacked += cost
            if chan.unacked >= self.mux.window // 4 and not chan.eof and not self.closed:
                n, chan.unacked = chan.unacked, 0
                await self.mux.send_frame(wire.encode(["credit", self.sid, ch, n]))
        return item

    def take_queued_control(self):
        """The control messages queued so far (e.g. before a handler was ready)."""
        items = list(self._control)
        self._control.clear()
        return items

    async def next_control(self):
        while not self._control:
            await self._park()
        return self._control.popleft()

    async def send(self, typ, body):
        """A control frame (no credit)."""
        await self.send_frame_raw(wire.encode([typ, self.sid, body]))

    async def _send_counted(self, ch, frame):
        cost = len(frame)
        while self._credit.get(ch, self.mux.peer_window) < cost:
            if self.finished is not None:
                raise Closed(f"session {self.sid} ended by the peer ({self.finished[0]})")
            await self.uncork()     # the peer grants credit only for what it has received
            await self._park()
        if self.closed:
            raise Closed(f"session {self.sid} closed")
        self._credit[ch] = self._credit.get(ch, self.mux.peer_window) - cost
        await self._out(frame)

    async def send_data(self, ch, data):
        chunk = self.mux.chunk
        if len(data) <= chunk:
            await self._send_counted(ch, wire.encode(["data", self.sid, ch, data]))
            return
        view = memoryview(data)
        for i in range(0, len(data), chunk):
            await self._send_counted(ch, wire.encode(["data", self.sid, ch, view[i:i + chunk]]))

    async def send_entry(self, ch, body):
        await self._send_counted(ch, wire.encode(["entry", self.sid, ch, body]))

    async def send_eof(self, ch):
        await self.send_frame_raw(wire.encode(["eof", self.sid, ch]))

    async def send_frame_raw(self, frame):
        if self.closed:
            raise Closed(f"session {self.sid} closed")
        await self._out(frame)

    async def _out(self, frame):
        if self._corked is None:
            await self.mux.send_frame(frame)
            return
        self._corked.append(frame)
        self._corked_bytes += len(frame)
        if self._corked_bytes >= CORK_LIMIT:
            await self._flush()

    def cork(self):
        """Hold this session's frames back until uncork() (or CORK_LIMIT bytes)."""
        if self._corked is None:
            self._corked = []
            self._corked_bytes = 0

    async def uncork(self):
        """Send what was held back, as one write, and stop corking."""
        if self._corked is not None:
            frames, self._corked = self._corked, None
            await self._send_joined(frames)

    async def _flush(self):
        frames, self._corked = self._corked, []
        await self._send_joined(frames)

    async def _send_joined(self, frames):
        self._corked_bytes = 0
        if frames:
            await self.mux.send_frame(b"".join(frames))

    def close(self):
        if not self.closed:
            self.closed = True
            self._in.clear()
            self.mux.sessions.pop(self.sid, None)
            self._lot.unpark_all()


class Mux:
    """One connection's sessions.  `run()` is the reader; everything else sends."""

    def __init__(self, stream, decoder, *, inbound, window, peer_window, peer_max_frame, terminal=()):
        self.stream = stream
        self.terminal = terminal    # session messages after which the peer sends nothing more
        self.decoder = decoder
        self.inbound = inbound
        self.window = window
        self.peer_window = peer_window
        self.chunk = min(wire.CHUNK, peer_max_frame - 64, peer_window // 2 - 64)
        self.sessions = {}
        self.on_open = None         # agent: callable(sid, body) for "open" frames
        self.on_connection = None   # callable(typ, body) for sid-0 messages
        self.closed = None          # reason, once closed
        self._lock = trio.StrictFIFOLock()
        self._sending = None

    def new_session(self, sid):
        if sid in self.sessions:
            raise ProtocolError(f"session {sid} already exists")
        s = self.sessions[sid] = Session(self, sid)
        return s

    async def send_frame(self, frame):
        if self.closed:
            raise Closed(f"connection closed: {self.closed}")
        async with self._lock:
            if self.closed:
                raise Closed(f"connection closed: {self.closed}")
            # A frame is sent whole or the connection is dead: cancelling the
            # session mid-frame would corrupt the stream for every other session.
            # Only close() (the connection going away) aborts a send in progress.
            sent = False
            with trio.CancelScope(shield=True) as self._sending:
                try:
                    await self.stream.send_all(frame)
                    sent = True
                except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                    self.close(f"send failed: {e or type(e).__name__}")
            self._sending = None
            if not sent:
                raise Closed(f"connection closed: {self.closed}")

    async def run(self):
        """Read and dispatch until the peer goes away ("eof") or MAGIC restarts it ("reset").

        Raises ProtocolError for a broken peer.  Always closes the mux.
        """
        decoder = self.decoder
        try:
            while True:
                while True:
                    msg = decoder.next()
                    if msg is None:
                        break
                    if msg is wire.RESET:
                        self.close("the peer started a new connection")
                        return "reset"
                    self._dispatch(msg, decoder.last_size)
                try:
                    data = await self.stream.receive_some(wire.RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    self.close("the peer disconnected")
                    return "eof"
                decoder.feed(data)
        except BaseException as e:
            self.close(f"{type(e).__name__}: {e}")
            raise

    def close(self, reason):
        if self.closed:
            return
        self.closed = reason
        if self._sending is not None:
            self._sending.cancel()
        for s in list(self.sessions.values()):
            s.close()

    def _dispatch(self, msg, size):
        typ, sid = msg[0], msg[1]
        n = len(msg)
        if typ == "data" or typ == "entry" or typ == "eof" or typ == "credit":
            want = 3 if typ == "eof" else 4
            if n != want:
                raise ProtocolError(f"{typ!r} frame has {n} elements (expected {want})")
            ch = msg[2]
            if ch not in wire.CHANNELS:
                raise ProtocolError(f"{typ!r} frame: unknown channel {ch!r}")
            if typ == "credit":
                amount = msg[3]
                if type(amount) is not int or amount <= 0:
                    raise ProtocolError("credit frame: amount must be a positive integer")
                s = self.sessions.get(sid)
                if s is not None:
                    s._add_credit(ch, amount)
                return
            if ch not in self.inbound:
                raise ProtocolError(f"{typ!r} frame on channel {ch!r}, which the peer may not send")
            if typ == "data" and type(msg[3]) is not bytes:
                raise ProtocolError("data frame: payload must be bin")
            if typ == "entry" and type(msg[3]) is not dict:
                raise ProtocolError("entry frame: body must be a map")
            s = self.sessions.get(sid)
            if s is None:
                return          # a session that ended; its late frames are dropped
            if typ == "eof":
                s._push_eof(ch)
            else:
                s._push(ch, msg[3], size)
            return
        if n != 3 or type(msg[2]) is not dict:
            raise ProtocolError(f"{typ!r} frame must be [type, session, map]")
        body = msg[2]
        if sid == 0:
            if self.on_connection is None:
                raise ProtocolError(f"unexpected {typ!r} frame on session 0")
            self.on_connection(typ, body)
            return
        s = self.sessions.get(sid)
        if s is None:
            if typ == "open" and self.on_open is not None:
                self.on_open(sid, body)
            return
        if typ == "open":
            raise ProtocolError(f"open for session {sid}, which is still running")
        s._on_control(typ, body)
