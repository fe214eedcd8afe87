"""Protocol Buffers wire format (proto3) for the few messages of hypeman's agent protocol.

Hand-written rather than the `protobuf` package: that package is 1.4 MB
installed (a 0.4 MB C extension plus descriptor modules), more than half the
initrd's remaining headroom (24 MiB budget), and it needs generated code or a
descriptor pool built at import time, under TCG, before the first call.  The
contract (agent/guest_proto.py) uses only scalars, strings, bytes, repeated
strings, one map<string, string>, enums, nested messages and oneofs: the
encoding of those is varints and length-delimited fields, the rules below.

A schema is {field number: (name, kind)}; kind is one of "string", "bytes",
"bool", "int32", "int64", "uint32", "enum", "repeated_string", "map_string",
or a nested schema (a dict).  Messages are plain dicts of the fields present.
Decoding skips unknown fields (proto3's rule) and keeps the last value of a
repeated scalar field; encoding omits proto3 defaults except for `oneof`
members (a schema's "oneof" key, a set of names), whose presence is the point.
"""

INT_KINDS = ("bool", "int32", "int64", "uint32", "enum")
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class DecodeError(ValueError):
    """A malformed message: names the field."""


def _varint(n):
    n &= (1 << 64) - 1          # negative int32/int64: ten bytes, two's complement
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(buf, pos, where):
    n = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise DecodeError(f"{where}: truncated or overlong varint")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7


def _key(num, wire):
    return _varint(num << 3 | wire)


def _len_field(num, data):
    return _key(num, _LEN) + _varint(len(data)) + data


def encode(schema, msg):
    """The wire bytes of `msg` (a dict) under `schema`."""
    oneof = schema.get("oneof", ())
    out = []
    for num, (name, kind) in _fields(schema):
        value = msg.get(name)
        if value is None or (name not in oneof and not value):
            continue    # proto3: a default is not sent (a oneof member is: its presence counts)
        if kind in INT_KINDS:
            out.append(_key(num, _VARINT) + _varint(int(value)))
        elif kind == "string":
            out.append(_len_field(num, value.encode("utf-8")))
        elif kind == "bytes":
            out.append(_len_field(num, bytes(value)))
        elif kind == "repeated_string":
            out.extend(_len_field(num, s.encode("utf-8")) for s in value)
        elif kind == "map_string":
            out.extend(_len_field(num, _len_field(1, k.encode("utf-8")) + _len_field(2, v.encode("utf-8")))
                       for k, v in value.items())
        else:
            out.append(_len_field(num, encode(kind, value)))
    return b"".join(out)


def _fields(schema):
    return ((num, spec) for num, spec in schema.items() if isinstance(num, int))


def _signed(n, kind):
    if kind == "int32":
        n &= 0xFFFFFFFF
        return n - (1 << 32) if n >> 31 else n
    if kind == "int64":
        return n - (1 << 64) if n >> 63 else n
    if kind == "bool":
        return bool(n)
    return n & 0xFFFFFFFF if kind == "uint32" else n


def _skip(buf, pos, wire, where):
    if wire == _VARINT:
        return _read_varint(buf, pos, where)[1]
    if wire == _I64:
        return pos + 8
    if wire == _I32:
        return pos + 4
    if wire == _LEN:
        n, pos = _read_varint(buf, pos, where)
        return pos + n
    raise DecodeError(f"{where}: unsupported wire type {wire}")


def decode(schema, buf, where="message"):
    """The dict of the fields present in `buf`.  Raises DecodeError naming the field."""
    buf = bytes(buf)
    msg = {}
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos, where)
        num, wire = key >> 3, key & 7
        spec = schema.get(num) if num else None
        if spec is None:
            pos = _skip(buf, pos, wire, where)
            if pos > len(buf):
                raise DecodeError(f"{where}: truncated field {num}")
            continue
        name, kind = spec
        here = f"{where}.{name}"
        if kind in INT_KINDS:
            if wire != _VARINT:
                raise DecodeError(f"{here}: expected a varint (wire type 0), got wire type {wire}")
            n, pos = _read_varint(buf, pos, here)
            msg[name] = _signed(n, kind)
            continue
        if wire != _LEN:
            raise DecodeError(f"{here}: expected a length-delimited field, got wire type {wire}")
        n, pos = _read_varint(buf, pos, here)
        if pos + n > len(buf):
            raise DecodeError(f"{here}: truncated ({n} bytes announced, {len(buf) - pos} left)")
        data, pos = buf[pos:pos + n], pos + n
        _store(msg, name, kind, data, here)
    return msg


def _text(data, where):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"{where}: not valid UTF-8") from None


def _store(msg, name, kind, data, where):
    if kind == "string":
        msg[name] = _text(data, where)
    elif kind == "bytes":
        msg[name] = data
    elif kind == "repeated_string":
        msg.setdefault(name, []).append(_text(data, where))
    elif kind == "map_string":
        entry = decode(MAP_ENTRY, data, where)
        msg.setdefault(name, {})[entry.get("key", "")] = entry.get("value", "")
    else:
        msg[name] = decode(kind, data, where)


MAP_ENTRY = {1: ("key", "string"), 2: ("value", "string")}
