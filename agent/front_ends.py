"""The agent's two front ends on its transports: Kindling's protocol and hypeman's gRPC.

One process, one implementation of each operation (agent/execs.py,
agent/files.py), two protocols:

- on a listening socket (vsock port 2222 -- hypeman's port --, a unix socket)
  each connection's first bytes choose: the HTTP/2 client preface
  (`PRI * HTTP/2.0...`) is gRPC (agent/grpc_front.py), anything else is
  Kindling's protocol (agent/server.py, which hunts for its MAGIC);
- a virtio-serial port named org.kindling.grpc.0, when the host attached one
  (Kindling's host with `create --grpc`: vsock is missing on hosts without
  /dev/vhost-vsock), carries gRPC alone.

The gRPC front end stays off the boot's critical path: agent/grpc_front.py
(and h2, hpack, hyperframe) is imported in a thread only after readiness
was reported; a gRPC connection that arrives earlier waits for it.  The
agent chroots into the program's root before it is ready, and that root may
hold no Python at all, so the import reads the initrd's modules through a
directory descriptor of the old root kept open across the chroot
(/proc/self/fd/N/<sys.path entry>).  The import time is written to
grpc.ready beside the agent's ready file (`import_ms=...`) for the benchmarks and tests.
"""

import os
import sys
import time

import trio

import agent as agent_pkg
from agent import transports
from agent.server import log
from initsys import ports

GRPC_PORT_NAME = "org.kindling.grpc.0"
GRPC_READY_NAME = "grpc.ready"      # beside the agent's ready file
PREFACE_START = b"PRI * HTTP/2.0"
SYSFS_PORTS = ports.SYSFS_PORTS


class PrefixedStream(trio.abc.Stream):
    """A stream whose first bytes were already read: gives them back first."""

    def __init__(self, stream, prefix):
        self.stream = stream
        self.prefix = prefix

    async def receive_some(self, max_bytes=None):
        if self.prefix:
            data, self.prefix = self.prefix, b""
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data):
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self):
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self):
        await self.stream.aclose()


class FrontEnds:
    """Holds the gRPC front end's lazy import and the optional gRPC serial port."""

    def __init__(self, agent, *, ready_file=None):
        self.agent = agent
        self.ready_file = ready_file
        self.root_fd = None
        self.grpc_port = None
        self.grpc = None            # agent.grpc_front, once imported
        self.loaded = trio.Event()
        self.import_error = None

    def open(self, sysfs=SYSFS_PORTS):
        """Before the chroot: keep the old root (for the import) and open the gRPC port."""
        self.root_fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        port = _port_device(GRPC_PORT_NAME, sysfs)
        if port is not None:
            transport = transports.SerialTransport(port)
            try:
                transport.open()
                self.grpc_port = transport
            except transports.TransportError as e:
                log(f"gRPC front end: {e}")

    def close(self):
        if self.grpc_port is not None:
            self.grpc_port.close()
        if self.root_fd is not None:
            os.close(self.root_fd)
            self.root_fd = None

    # --- Kindling's protocol or gRPC, by the connection's first bytes ---

    def handler_for(self, transport):
        """Sockets (vsock, unix) carry both protocols; virtio-serial only Kindling's."""
        return self.agent.serve_stream if transport.name == "serial" else self.sniffing_handler

    async def sniffing_handler(self, stream):
        first = b""
        while len(first) < len(PREFACE_START) and PREFACE_START.startswith(first):
            data = await stream.receive_some()
            if not data:
                return
            first += data
        stream = PrefixedStream(stream, first)
        if first.startswith(PREFACE_START):
            await self.serve_grpc(stream)
        else:
            await self.agent.serve_stream(stream)

    async def serve_grpc(self, stream):
        await self.loaded.wait()
        if self.grpc is None:
            return      # the import failed (logged): the client sees the connection close
        await self.grpc.serve_connection(stream, self.agent)

    # --- after readiness ---

    async def start(self, transport):
        """Import the gRPC front end in a thread, then serve the gRPC port if there is one.
        Nothing when gRPC has no way in (virtio-serial and no gRPC port: Kindling's default)."""
        if transport.name == "serial" and self.grpc_port is None:
            return
        await trio.to_thread.run_sync(self._import)
        self.loaded.set()
        if self.grpc is not None and self.grpc_port is not None:
            await self.grpc_port.run(self.serve_grpc)

    def _import(self):
        t0 = time.perf_counter()
        if self.root_fd is not None and _chrooted(self.root_fd):
            base = f"/proc/self/fd/{self.root_fd}"     # needs /proc in the new root
            for paths in (sys.path, agent_pkg.__path__):  # our own package resolves by its __path__
                paths[:] = [base + p if p.startswith("/") else p for p in paths]
        try:
            import agent.grpc_front as grpc_front
        except ImportError as e:
            log(f"gRPC front end unavailable: {e}")
            self.import_error = e
            return
        self.grpc = grpc_front
        ms = (time.perf_counter() - t0) * 1000
        if not self.ready_file:
            return
        try:
            os.makedirs(os.path.dirname(self.ready_file), exist_ok=True)
            with open(self.ready_file, "w") as f:
                f.write(f"import_ms={ms:.1f}\n")
        except OSError:
            pass    # only the benchmarks read it


def _chrooted(root_fd):
    """True when / is no longer the root that root_fd was opened on."""
    now, then = os.stat("/"), os.fstat(root_fd)
    return (now.st_dev, now.st_ino) != (then.st_dev, then.st_ino)


def _port_device(name, sysfs):
    """/dev/vportNpM of the virtio-serial port called `name`, or None."""
    port = ports.named_ports(sysfs).get(name)
    return f"/dev/{port}" if port else None
