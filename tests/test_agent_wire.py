"""agent/wire.py: framing, MAGIC resync, limits; the decoder fuzzed with hypothesis."""

import tracemalloc

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import wire
from agent.wire import RESET, Decoder, ProtocolError


def decode_all(decoder, data):
    decoder.feed(data)
    out = []
    while (msg := decoder.next()) is not None:
        out.append(msg)
    return out


def test_roundtrip_after_magic():
    msgs = [["hello", 0, {"versions": [1], "nonce": b"n" * 16}], ["data", 3, "out", b"\x00\xff" * 100],
            ["eof", 3, "out"], ["credit", 3, "in", 4096], ["exit", 3, {"code": 0}]]
    stream = wire.MAGIC + b"".join(wire.encode(m) for m in msgs)
    assert decode_all(Decoder(), stream) == [RESET, *msgs]


def test_byte_at_a_time():
    msgs = [["open", 1, {"op": "stat", "path": "/etc"}], ["data", 1, "in", b"abc"]]
    stream = wire.MAGIC + b"".join(wire.encode(m) for m in msgs)
    d = Decoder()
    out = []
    for i in range(len(stream)):
        out += decode_all(d, stream[i:i + 1])
    assert out == [RESET, *msgs]


def test_garbage_before_magic_is_discarded_boundedly():
    d = Decoder()
    assert decode_all(d, b"x" * 1_000_000) == []
    assert d.buffered < len(wire.MAGIC)
    assert decode_all(d, wire.MAGIC + wire.encode(["eof", 1, "in"])) == [RESET, ["eof", 1, "in"]]
    assert d.discarded >= 1_000_000 - len(wire.MAGIC)


def test_magic_at_a_frame_boundary_is_a_new_connection():
    stream = wire.MAGIC + wire.encode(["eof", 1, "in"]) + wire.MAGIC + wire.encode(["eof", 2, "in"])
    assert decode_all(Decoder(), stream) == [RESET, ["eof", 1, "in"], RESET, ["eof", 2, "in"]]


def test_non_utf8_names_survive():
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    msg = ["entry", 1, "in", {"path": name}]
    assert decode_all(Decoder(), wire.MAGIC + wire.encode(msg))[1] == msg


def test_oversized_length_refused_before_buffering():
    d = Decoder()
    d.feed(wire.MAGIC)
    assert d.next() is RESET
    d.feed((wire.MAX_FRAME + 1).to_bytes(4, "big") + b"x" * 100)
    with pytest.raises(ProtocolError, match="limit"):
        d.next()
    assert d.hunting


@pytest.mark.parametrize("body, match", [
    (msgpack.packb({"a": 1}), "undecodable|array"),
    (msgpack.packb([1, 2]), "type is not a string"),
    (msgpack.packb(["data", -1, "out", b""]), "session id"),
    (msgpack.packb(["x"]), "array of 1"),
    (msgpack.packb(["eof", 1, "in"]) + b"\x00", "trailing"),
    (b"\xc1", "undecodable"),
    (msgpack.packb(["eof", 1, msgpack.ExtType(1, b"x")]), "undecodable"),
])
def test_bad_bodies(body, match):
    d = Decoder()
    d.feed(wire.MAGIC + len(body).to_bytes(4, "big") + body)
    assert d.next() is RESET
    with pytest.raises(ProtocolError, match=match):
        d.next()


def test_client_limits_bound_control_frames():
    big = ["result", 1, {"x": "y" * (wire.MAX_CONTROL + 10)}]
    d = Decoder(wire.CLIENT_LIMITS)
    d.feed(wire.MAGIC + wire.encode(big))
    assert d.next() is RESET
    with pytest.raises(ProtocolError, match="control limit"):
        d.next()
    # data frames may be large
    d = Decoder(wire.CLIENT_LIMITS)
    msg = ["data", 1, "out", b"z" * (wire.MAX_CONTROL * 4)]
    assert decode_all(d, wire.MAGIC + wire.encode(msg)) == [RESET, msg]


def test_relpath_checks():
    assert wire.check_relpath("") == []
    assert wire.check_relpath("a/b") == ["a", "b"]
    for bad in ("../x", "/etc/x", "a/../b", "a//b", "a/./b", "a/", "x\0y", "..", "."):
        with pytest.raises(ProtocolError) as e:
            wire.check_relpath(bad)
        assert e.value.code == "unsafe_path"


# --- fuzzing -------------------------------------------------------------------------

FRAMES = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda m: wire.encode(m), st.lists(
        st.one_of(st.text(max_size=8), st.integers(-2**63, 2**64 - 1), st.binary(max_size=32), st.none(),
                  st.dictionaries(st.text(max_size=4), st.integers(0, 2**32), max_size=3)), max_size=5)),
    st.just(wire.MAGIC),
    st.builds(lambda n: n.to_bytes(4, "big"), st.integers(0, 2**32 - 1)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(FRAMES, max_size=20), st.integers(1, 97), st.sampled_from([wire.AGENT_LIMITS, wire.CLIENT_LIMITS]))
def test_fuzz_decoder_never_crashes_and_stays_bounded(pieces, step, limits):
    data = b"".join(pieces)
    d = Decoder(limits)
    for i in range(0, len(data), step):
        d.feed(data[i:i + step])
        while True:
            try:
                msg = d.next()
            except ProtocolError:
                continue
            if msg is None:
                break
            assert msg is RESET or (isinstance(msg, list) and isinstance(msg[0], str)
                                    and type(msg[1]) is int)
        assert d.buffered <= limits.max_frame + wire.HEADER + step


@pytest.mark.parametrize("limits", [wire.CLIENT_LIMITS, wire.AGENT_LIMITS], ids=["client", "agent"])
def test_no_allocation_blowup(limits):
    """The worst control frame -- as many empty containers as fit -- cannot make the
    decoder allocate without bound: ~64 bytes per body byte at most, and the client
    takes control frames of at most 64 KiB."""
    lim = limits.max_control
    inner = min(limits.max_array, 64)
    n = max(1, (lim - 64) // (inner + 1))
    body = msgpack.packb(["result", 1, [[[] for _ in range(inner)] for _ in range(n)]])[:lim]
    assert len(body) <= lim
    d = Decoder(limits)
    d.feed(wire.MAGIC + len(body).to_bytes(4, "big") + body)
    assert d.next() is RESET
    tracemalloc.start()
    try:
        try:
            d.next()
        except ProtocolError:
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 80 * len(body) + (1 << 20), f"decoding a {len(body)}-byte frame peaked at {peak} bytes"
    if limits is wire.CLIENT_LIMITS:
        assert peak < 8 << 20
