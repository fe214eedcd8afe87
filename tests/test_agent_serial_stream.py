"""agent/transports.py SerialStream: readv/writev in port-sized pieces, on a socketpair.

A socketpair stands in for the virtio-serial port (no guest here): it checks that the
pieces are read back whole and in order, that a short read ends a burst, that EOF ends
the connection, and that a write larger than one piece arrives whole.  The port's own
limits (4 KiB per read, 32 KiB per write) are exercised by the VM tests' copies."""

import os
import socket

import trio

from agent import transports
from agent.transports import SerialStream


def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    return a, b


def test_pieces_cut_a_view_and_stop_at_max_pieces():
    view = memoryview(bytearray(10000))
    assert [len(p) for p in transports.pieces(view, 4096)] == [4096, 4096, 1808]
    assert len(transports.pieces(memoryview(bytearray(1 << 20)), 4096)) == transports.MAX_PIECES


def test_a_burst_is_read_whole_and_eof_ends_the_connection():
    a, b = pair()
    data = os.urandom(300_000)
    stream = SerialStream(a.fileno())

    async def main():
        got = b""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, lambda: (b.sendall(data), b.shutdown(socket.SHUT_WR)))
            while chunk := await stream.receive_some(64 << 10):
                assert len(chunk) <= 64 << 10
                got += chunk
        return got
    assert trio.run(main) == data and stream.gone
    a.close()
    b.close()


def test_send_all_writes_every_byte_in_order():
    a, b = pair()
    data = os.urandom(200_000)
    stream = SerialStream(a.fileno())

    async def main():
        async with trio.open_nursery() as nursery:
            got = []
            nursery.start_soon(trio.to_thread.run_sync, lambda: got.append(_read_exactly(b, len(data))))
            await stream.send_all(data)
        return got[0]
    assert trio.run(main) == data
    a.close()
    b.close()


def _read_exactly(sock, n):
    out = bytearray()
    while len(out) < n:
        out += sock.recv(n - len(out))
    return bytes(out)


def test_reads_of_changing_sizes_share_one_buffer_and_lose_nothing():
    a, b = pair()
    data = os.urandom(700_000)
    stream = SerialStream(a.fileno())
    sizes = [10, 300_000, 4096, 65536, 1, 500_000]

    async def main():
        got = b""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, lambda: (b.sendall(data), b.shutdown(socket.SHUT_WR)))
            i = 0
            while chunk := await stream.receive_some(sizes[i % len(sizes)]):
                assert len(chunk) <= sizes[i % len(sizes)]
                got += chunk
                i += 1
        return got
    assert trio.run(main) == data
    a.close()
    b.close()
