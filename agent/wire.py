"""The agent protocol on the wire: framing, msgpack encoding, limits, the versioned hello.

Spec: docs/agent-protocol.md.  Both the guest agent and the host client
(host_shim/agent_client.py) import this module; nothing else frames or parses
agent messages.

A frame is a 4-byte big-endian body length followed by the body, one msgpack
array whose first two elements are the message type (str) and the session id
(int, 0 = the connection itself).  Each connection starts with MAGIC, which
can never be a valid length prefix (its first byte is 0xFF and bodies are at
most MAX_FRAME bytes): a reader that lost its place -- stale bytes from a
previous host connection on virtio-serial, a peer that died mid-frame --
throws bytes away until it finds MAGIC again.

Decoding is bounded: a length above the reader's limit is refused before a
byte of the body is buffered; a control frame (anything but `data`) may be at
most `max_control` bytes, so the objects msgpack builds from one frame stay
small (an untrusted peer cannot turn 1 MiB of nested empty arrays into tens of
MiB of Python lists); `data` payloads are msgpack bin, copied 1:1.

Guest import cost matters (docs/agent-protocol.md, "Import budget"): this module
imports only msgpack and os.
"""

import os

import msgpack

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)

MAGIC = b"\xffKNDLAG\x01"

MAX_FRAME = 1 << 20            # largest body anyone sends or accepts by default
MIN_FRAME = 64 << 10           # a peer may lower its max_frame, not below this
MAX_CONTROL = 64 << 10         # largest non-data body a client accepts from the guest
CHUNK = 256 << 10              # data payload per frame (bench/agent_vs_qga.py: fewer frames, faster copies)
WINDOW = 2 << 20               # default receive window per (session, channel): 8 chunks
MIN_WINDOW = 128 << 10         # hello refuses smaller windows (a frame must always fit)
RECEIVE_SIZE = 256 << 10       # bytes asked of the transport per read

HEADER = 4
NONCE_LEN = 16

# Channels of a session.  "in": host -> agent (stdin, files sent to the guest);
# "out", "err": agent -> host (stdout, stderr, files read from the guest).
CHANNELS = ("in", "out", "err")


class ProtocolError(Exception):
    """The peer broke the protocol (bad frame, bad field, flow control violated)."""

    def __init__(self, message, code="protocol"):
        super().__init__(message)
        self.code = code


class Reset:
    """Returned by Decoder.next() where MAGIC starts a new connection."""

    __slots__ = ()

    def __repr__(self):
        return "RESET"


RESET = Reset()

_packer = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape")


def encode(msg):
    """One frame (length prefix + msgpack body) for a message list."""
    body = _packer.pack(msg)
    return len(body).to_bytes(HEADER, "big") + body


class Limits:
    """What a reader accepts.  The agent trusts its host more than the host trusts its guest."""

    __slots__ = ("max_frame", "max_control", "max_array", "max_map")

    def __init__(self, max_frame=MAX_FRAME, max_control=MAX_FRAME, max_array=1 << 16, max_map=1 << 14):
        self.max_frame = max_frame
        self.max_control = max_control
        self.max_array = max_array
        self.max_map = max_map


AGENT_LIMITS = Limits()                                   # reading what the host sends
CLIENT_LIMITS = Limits(max_control=MAX_CONTROL, max_array=64, max_map=64)   # reading the guest


class Decoder:
    """Sans-IO frame decoder: feed() bytes, then call next() until it returns None.

    next() returns a message (a list), RESET where MAGIC starts a new
    connection, or None when it needs more bytes.  It raises ProtocolError for
    a bad frame and then hunts for the next MAGIC, so a caller may go on.
    At most max_frame + HEADER + the last feed() bytes are ever buffered.
    """

    def __init__(self, limits=AGENT_LIMITS):
        self.limits = limits
        self._buf = bytearray()
        self.hunting = True
        self.discarded = 0          # bytes thrown away while hunting
        self.last_size = 0          # encoded size (header included) of the last message

    @property
    def buffered(self):
        return len(self._buf)

    def feed(self, data):
        self._buf += data

    def hunt(self):
        """Throw away bytes up to the next MAGIC (after a protocol error or a disconnect)."""
        self.hunting = True

    def next(self):
        buf = self._buf
        if self.hunting:
            pos = buf.find(MAGIC)
            if pos < 0:
                keep = len(MAGIC) - 1
                if len(buf) > keep:
                    self.discarded += len(buf) - keep
                    del buf[:len(buf) - keep]
                return None
            self.discarded += pos
            del buf[:pos + len(MAGIC)]
            self.hunting = False
            return RESET
        if len(buf) < HEADER:
            if buf and buf[0] == 0xFF and not MAGIC.startswith(bytes(buf)):
                return self._fail("bad frame header")
            return None
        if buf[0] == 0xFF:
            if len(buf) < len(MAGIC):
                if MAGIC.startswith(bytes(buf)):
                    return None
                return self._fail("bad frame header")
            if buf.startswith(MAGIC):
                del buf[:len(MAGIC)]
                return RESET
            return self._fail("bad frame header")
        size = int.from_bytes(buf[:HEADER], "big")
        if size == 0 or size > self.limits.max_frame:
            return self._fail(f"frame of {size} bytes (limit {self.limits.max_frame})")
        if len(buf) < HEADER + size:
            return None
        body = bytes(buf[HEADER:HEADER + size])
        del buf[:HEADER + size]
        self.last_size = HEADER + size
        return self._decode(body)

    def _fail(self, message):
        self.hunting = True
        raise ProtocolError(message)

    def _decode(self, body):
        lim = self.limits
        unpacker = msgpack.Unpacker(
            raw=False, use_list=True, strict_map_key=True, unicode_errors="surrogateescape",
            max_buffer_size=len(body), max_str_len=len(body), max_bin_len=len(body),
            max_array_len=lim.max_array, max_map_len=lim.max_map, max_ext_len=0)
        unpacker.feed(body)
        try:
            n = unpacker.read_array_header()
            if not 2 <= n <= 5:
                raise ProtocolError(f"frame is an array of {n} elements (expected 2..5)")
            typ = unpacker.unpack()
            if not isinstance(typ, str):
                raise ProtocolError("frame type is not a string")
            if typ != "data" and len(body) > lim.max_control:
                raise ProtocolError(f"{typ!r} frame of {len(body)} bytes (control limit {lim.max_control})")
            msg = [typ]
            for _ in range(n - 1):
                msg.append(unpacker.unpack())
            try:
                unpacker.unpack()
            except msgpack.OutOfData:
                pass
            else:
                raise ProtocolError(f"{typ!r} frame has trailing bytes")
        except ProtocolError:
            raise
        except (ValueError, TypeError, msgpack.UnpackException, msgpack.OutOfData) as e:
            raise ProtocolError(f"undecodable frame: {type(e).__name__}: {e}") from None
        sid = msg[1]
        if type(sid) is not int or not 0 <= sid < 1 << 32:
            raise ProtocolError(f"{typ!r} frame: session id must be an integer 0..2^32-1")
        return msg


# --- field validation ---------------------------------------------------------

_TYPES = {str: "a string", int: "an integer", bool: "a boolean", bytes: "bytes",
          list: "a list", dict: "a map", float: "a number"}


def field(body, name, kind, *, default=None, required=False, where=""):
    """body[name] checked against kind (a type or a tuple of types); names the field on error."""
    if not isinstance(body, dict):
        raise ProtocolError(f"{where or 'message'}: body must be a map")
    if name not in body or body[name] is None:
        if required:
            raise ProtocolError(f"{where}{'.' if where else ''}{name}: required", code="invalid")
        return default
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = any(isinstance(value, k) and not (k is int and isinstance(value, bool)) for k in kinds)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        expected = " or ".join(_TYPES.get(k, k.__name__) for k in kinds)
        raise ProtocolError(f"{where}{'.' if where else ''}{name}: expected {expected}, got {type(value).__name__}",
                            code="invalid")
    return value


# --- hello ----------------------------------------------------------------------

def new_nonce():
    return os.urandom(NONCE_LEN)


def client_hello(nonce, *, window=WINDOW, max_frame=MAX_FRAME, client="kindling"):
    return ["hello", 0, {"versions": list(SUPPORTED_VERSIONS), "nonce": nonce,
                         "window": window, "max_frame": max_frame, "client": client}]


def agent_hello(nonce, *, window=WINDOW, max_frame=MAX_FRAME, ops=()):
    return ["hello", 0, {"version": PROTOCOL_VERSION, "nonce": nonce, "window": window,
                         "max_frame": max_frame, "agent": "kindling-agent", "ops": list(ops)}]


def peer_params(body, where):
    """(window, max_frame) announced in a hello body, validated."""
    window = field(body, "window", int, required=True, where=where)
    max_frame = field(body, "max_frame", int, required=True, where=where)
    if not MIN_WINDOW <= window <= 1 << 30:
        raise ProtocolError(f"{where}.window: {window} outside {MIN_WINDOW}..{1 << 30}")
    if not MIN_FRAME <= max_frame <= 1 << 30:
        raise ProtocolError(f"{where}.max_frame: {max_frame} outside {MIN_FRAME}..{1 << 30}")
    return window, max_frame


def check_relpath(name, where="entry.path"):
    """A path inside a copied tree: relative, no '..', '.', empty components or NUL.

    "" is the root of the tree itself.  Returns the list of components.
    """
    if not isinstance(name, str):
        raise ProtocolError(f"{where}: expected a string", code="invalid")
    if name == "":
        return []
    if len(name) > 4096:
        raise ProtocolError(f"{where}: longer than 4096 characters", code="unsafe_path")
    if "\0" in name:
        raise ProtocolError(f"{where} {name!r}: contains NUL", code="unsafe_path")
    if name.startswith("/"):
        raise ProtocolError(f"{where} {name!r}: absolute path", code="unsafe_path")
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise ProtocolError(f"{where} {name!r}: component {part!r} not allowed", code="unsafe_path")
    return parts
