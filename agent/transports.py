"""Where the host reaches the agent: a virtio-serial port, a vsock port or a unix socket.

Each transport is opened synchronously (`open()`, before a chroot and before
readiness is reported) and then `run(handler)` calls `await handler(stream)`
for every host connection, a trio Stream that ends (receive_some returns b"")
when the host goes away.

virtio-serial is one byte stream for the VM's whole life, and the host side
comes and goes.  What the guest sees (drivers/char/virtio_console.c):

- while no host client is connected, poll() reports POLLHUP (and POLLIN), a
  read() returns 0 and a write() blocks (EAGAIN when non-blocking);
- every change of the host's connection state -- and every arrival of data --
  sends SIGIO to the owner of an O_ASYNC file (send_sigio_to_port()).

So the device stays open for good; a read of 0 ends one connection, and the
agent then waits for SIGIO, re-checking POLLHUP, to learn that a host came
back.  That is an event, not a poll: waiting on the fd itself would spin,
because epoll reports EPOLLHUP at once while the host is away.  As insurance
against a kernel that does not deliver SIGIO, the state is also re-checked
every RECHECK seconds (one poll() syscall, not a busy loop).  Writes that
would block re-check POLLHUP too, so a send to a departed host fails instead
of spinning, and its tail can never leak into the next host's connection.
Stale bytes are not drained (a drain could swallow the hello of a host that
connected a moment after the check -- seen under TCG): the next connection
hunts for MAGIC (agent/wire.py) and the host ignores replies without its nonce.

vsock listens on port 2222 (any CID).  It cannot be exercised on the
development machines (no /dev/vhost-vsock, no vsock loopback): it shares the
listener code with the unix socket, which the tests use.
"""

import errno
import fcntl
import mmap
import os
import select
import signal
import socket
import stat

import trio

SERIAL_NAME = "org.kindling.agent.0"
SERIAL_PATH = "/dev/virtio-ports/" + SERIAL_NAME
VSOCK_PORT = 2222
MAX_CONNECTIONS = 16
RECHECK = 5.0


PORT_BUFFER = 4096       # what one read() of a port returns at most (the driver's PAGE_SIZE buffers)
PORT_WRITE = 32 << 10    # what one write() of a port sends at most (port_fops_write)
MAX_PIECES = 64          # iovecs per readv/writev


def pieces(view, size):
    """`view` cut into `size`-byte memoryviews, at most MAX_PIECES of them."""
    return [view[i:i + size] for i in range(0, min(len(view), size * MAX_PIECES), size)]


class TransportError(Exception):
    """The transport cannot be opened: names the device, path or port."""


# --- virtio-serial ------------------------------------------------------------------

def host_connected(fd):
    """False while the host side of a virtio-serial port is closed (POLLHUP)."""
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLOUT)
    for _, revents in p.poll(0):
        if revents & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
            return False
    return True


class SerialStream(trio.abc.Stream):
    """One host connection on the port.  Does not own the fd: the transport does."""

    def __init__(self, fd):
        self.fd = fd
        self.gone = False
        self._view = None       # the read buffer (`_buffer`) and its pieces for readv
        self._pieces = None

    async def receive_some(self, max_bytes=None):
        """Up to max_bytes.  A read() of the port returns at most one 4 KiB buffer of the
        driver, so this reads on until the port is empty: one wakeup per burst, not per
        page -- and one readv() of page-sized pieces per syscall (the driver has no
        read_iter: the kernel calls its read() per piece and stops at the first short
        one), not one read() per page."""
        await trio.lowlevel.checkpoint()
        max_bytes = max_bytes or 65536
        view = self._buffer(max_bytes)
        total = 0
        while not self.gone and total < max_bytes:
            try:
                n = os.readv(self.fd, self._pieces if not total and max_bytes == len(view)
                             else pieces(view[total:max_bytes], PORT_BUFFER))
            except BlockingIOError:
                if total:
                    break
                await trio.lowlevel.wait_readable(self.fd)
                continue
            except OSError as e:
                self.gone = True
                raise trio.BrokenResourceError(f"virtio-serial read: {e.strerror}") from None
            if not n:
                if not total:
                    self.gone = True    # the host left (the next call sees 0 again if data was pending)
                break
            total += n
        return bytes(view[:total])

    def _buffer(self, size):
        """The stream's read buffer (kept: no allocation per read), at least `size` bytes.
        An anonymous mapping, not a bytearray: its pages cost memory only once a read has
        written them (a bytearray is zero-filled at once, and inside the heap: the agent
        inherits PID 1's raised mmap threshold), so an agent that only runs commands keeps
        a page or two of it."""
        if self._view is None or len(self._view) < size:
            self._view = memoryview(mmap.mmap(-1, size))
            self._pieces = pieces(self._view, PORT_BUFFER)
        return self._view

    async def send_all(self, data):
        await trio.lowlevel.checkpoint()
        view = memoryview(data)
        while view:
            if self.gone:
                raise trio.BrokenResourceError("the host disconnected")
            try:
                n = os.writev(self.fd, pieces(view, PORT_WRITE))
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.fd)
                if not host_connected(self.fd):
                    self.gone = True
                continue
            except OSError as e:
                self.gone = True
                raise trio.BrokenResourceError(f"virtio-serial write: {e.strerror}") from None
            view = view[n:]

    async def wait_send_all_might_not_block(self):
        await trio.lowlevel.wait_writable(self.fd)

    async def aclose(self):
        self.gone = True
        await trio.lowlevel.checkpoint()


class SerialTransport:
    name = "serial"

    def __init__(self, path=SERIAL_PATH):
        self.path = path
        self.fd = None

    def describe(self):
        return f"virtio-serial {self.path}"

    def open(self):
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as e:
            raise TransportError(f"virtio-serial port {self.path}: {e.strerror}"
                                 f" (is -device virtserialport,name={SERIAL_NAME} given to QEMU,"
                                 " and did PID 1 create the link?)") from None
        if stat.S_ISREG(os.fstat(fd).st_mode) or stat.S_ISDIR(os.fstat(fd).st_mode):
            os.close(fd)
            raise TransportError(f"virtio-serial port {self.path}: not a character device or socket")
        self.fd = fd

    async def _wait_for_host(self, sigio):
        # Nothing is read while waiting: bytes a departed host left behind cannot be told
        # from those of a host that connected a moment after the check, so they are left
        # to the next connection's hunt for MAGIC (and the host's nonce check).
        while not host_connected(self.fd):
            with trio.move_on_after(RECHECK):
                await sigio.__anext__()

    async def run(self, handler):
        with trio.open_signal_receiver(signal.SIGIO) as sigio:
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETOWN, os.getpid())
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | os.O_ASYNC)
            try:
                while True:
                    await self._wait_for_host(sigio)
                    await handler(SerialStream(self.fd))
            finally:
                fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_ASYNC)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# --- listening sockets --------------------------------------------------------------

class _ListenerTransport:
    sock = None

    async def run(self, handler):
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self.sock))
        active = 0

        async def one(stream):
            nonlocal active
            try:
                await handler(stream)
            finally:
                active -= 1
                await stream.aclose()

        async with trio.open_nursery() as nursery:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as e:
                    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
                        await trio.sleep(0.1)   # out of resources: let a connection end first
                        continue
                    raise
                if active >= MAX_CONNECTIONS:
                    await stream.aclose()
                    continue
                active += 1
                nursery.start_soon(one, stream)

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class UnixTransport(_ListenerTransport):
    name = "unix"

    def __init__(self, path):
        self.path = path

    def describe(self):
        return f"unix socket {self.path}"

    def open(self):
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)    # a stale socket of an earlier agent
        except FileNotFoundError:
            pass
        except OSError as e:
            raise TransportError(f"unix socket {self.path}: {e.strerror}") from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(self.path)
            os.chmod(self.path, 0o600)
            sock.listen(MAX_CONNECTIONS)
        except OSError as e:
            sock.close()
            raise TransportError(f"unix socket {self.path}: {e.strerror}") from None
        self.sock = sock


class VsockTransport(_ListenerTransport):
    name = "vsock"

    def __init__(self, port=VSOCK_PORT, cid=socket.VMADDR_CID_ANY):
        self.port = port
        self.cid = cid

    def describe(self):
        return f"vsock port {self.port}"

    def open(self):
        try:
            sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        except OSError as e:
            raise TransportError(f"vsock: {e.strerror} (is the vsock virtio transport loaded?)") from None
        try:
            sock.bind((self.cid, self.port))
            sock.listen(MAX_CONNECTIONS)
        except OSError as e:
            sock.close()
            raise TransportError(f"vsock port {self.port}: {e.strerror}") from None
        self.sock = sock


def make_transport(kind, path=None, port=None):
    """A transport from the CLI's --transport/--path/--port."""
    if kind == "serial":
        return SerialTransport(path or SERIAL_PATH)
    if kind == "unix":
        if not path:
            raise TransportError("--transport unix needs --path (the socket to listen on)")
        return UnixTransport(path)
    if kind == "vsock":
        return VsockTransport(VSOCK_PORT if port is None else port)
    raise TransportError(f"--transport: {kind!r} is not one of serial, vsock, unix")
