"""agent.main: readiness handshake, CLI, no lazy imports after startup, shutdown,
serve() from a forked process; the transports (virtio-serial semantics on a fake
device, vsock)."""

import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time

import grpc
import pytest
import trio
import trio.testing

from agent import transports, wire
from agent.server import Agent
import test_agent_grpc
from agentproc import ROOT, AgentProcess, process_gone, wait_until
from host_shim.agent_client import AgentError, open_agent, open_agent_stream
from initsys import protocol


def run_agent_cli(args, env=None, timeout=30):
    return subprocess.run([sys.executable, "-m", "agent.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, **(env or {})))


async def test_ready_only_once_serving():
    a = AgentProcess()
    try:
        # the byte came (AgentProcess waited for it): the socket must accept at once, no retry
        with trio.fail_after(10):
            async with open_agent(a.socket, timeout=5) as agent:
                assert (await agent.exec(["true"])).code == 0
        marker = protocol.parse_line(a.ready_line)
        assert marker.kind == protocol.AGENT_READY and marker.ts is not None
        stamp = a.ready_file.read_text().strip()
        assert protocol.parse_ts(stamp) is not None
        assert abs(protocol.parse_ts(stamp) - marker.ts) < 5 * 10**9
    finally:
        a.stop()


def test_agent_that_cannot_serve_never_signals_ready(tmp_path):
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "agent.main", "--transport", "serial",
                             "--path", str(tmp_path / "no-such-port")], cwd=ROOT, pass_fds=[w],
                            env=dict(os.environ, KINDLING_READY_FD=str(w)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(w)
    out, err = proc.communicate(timeout=30)
    ready, _, _ = select.select([r], [], [], 0)
    assert ready and os.read(r, 1) == b""       # EOF without a byte
    os.close(r)
    assert proc.returncode == 1
    assert "no-such-port" in err and "virtserialport" in err
    assert protocol.AGENT_READY not in out


@pytest.mark.parametrize("args, env, message", [
    ([], {}, "--transport is required"),
    (["--transport", "carrier-pigeon"], {}, "not one of serial, vsock, unix"),
    (["--transport", "unix"], {}, "needs --path"),
    (["--transport", "vsock", "--port", "x"], {}, "--port 'x'"),
    (["--transport"], {}, "--transport needs a value"),
    (["--frobnicate", "1"], {}, "unknown argument '--frobnicate'"),
    (["--transport", "unix", "--path", "/tmp/x.sock"], {"KINDLING_READY_FD": "abc"}, "KINDLING_READY_FD='abc'"),
    (["--transport", "unix", "--path", "/tmp/x.sock"], {"KINDLING_READY_FD": "987"}, "not an open file descriptor"),
])
def test_cli_errors_name_the_problem(args, env, message):
    r = run_agent_cli(args, env)
    assert r.returncode in (1, 2), r
    assert message in r.stderr


GUARD = textwrap.dedent("""
    import sys
    sys.argv[0] = "agent"
    import agent.main
    import agent.grpc_front  # imported after readiness by design (agent/front_ends.py), not lazily per call

    class NoLazyImports:
        def find_spec(self, name, path=None, target=None):
            sys.stderr.write(f"LAZY IMPORT after startup: {name}\\n")
            sys.stderr.flush()
            raise ImportError(f"lazy import of {name} after startup")

    sys.meta_path.insert(0, NoLazyImports())
    sys.exit(agent.main.main())
""")


def grpc_calls(socket, tree):
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        res = test_agent_grpc.run_exec(channel, {"command": ["sh", "-c", "echo hi"]})
        st = test_agent_grpc.method(channel, "StatPath")({"path": str(tree)}, timeout=30)
        return res, {k: st.get(k) for k in ("exists", "is_dir")}


async def test_no_lazy_imports_after_startup(tmp_path):
    """In the guest the agent serves chrooted into a root without Python: importing
    agent.main must load everything any request will need."""
    a = AgentProcess(argv_prefix=[sys.executable, "-c", GUARD])
    try:
        tree = tmp_path / "tree"
        (tree / "d").mkdir(parents=True)
        (tree / "d" / "f").write_text("x")
        os.symlink("d/f", tree / "l")
        with trio.fail_after(60):
            async with open_agent(a.socket, timeout=10) as agent:
                assert (await agent.exec(["sh", "-c", "echo hi"])).stdout == b"hi\n"
                assert (await agent.exec(["cat"], stdin=b"in")).stdout == b"in"
                assert (await agent.exec(["stty", "size"], tty=True, rows=7, cols=9)).stdout == b"7 9\r\n"
                assert (await agent.exec(["cat"], tty=True, stdin=b"x")).code == 0
                assert (await agent.exec(["sleep", "5"], timeout=0.2)).timed_out
                assert (await agent.exec(["no-such-command"])).code == 127
                assert (await agent.exec(["id", "-u"], user="nobody", env={"A": "b"}, cwd="/")).code == 0
                async with agent.open_exec(["sleep", "10"], tty=True, stdin=True) as proc:
                    await proc.resize(30, 100)
                    await proc.signal(signal.SIGTERM, group=True)
                    assert (await proc.wait()).code == 143
                with pytest.raises(AgentError):
                    await agent.exec(["true"], cwd="/no/such")
                with pytest.raises(AgentError):
                    await agent.exec(["true"], user="no-such-user")
                await agent.copy_to(tree, a.dir / "tree")
                await agent.copy_from(a.dir / "tree", tmp_path / "back")
                with pytest.raises(AgentError):
                    await agent.copy_from(a.dir / "missing", tmp_path / "never")
                assert (await agent.stat(a.dir / "tree" / "l")).target == "d/f"
                # the gRPC front end's calls too (test_agent_grpc.py has their details)
                assert await trio.to_thread.run_sync(grpc_calls, a.socket, a.dir / "tree") == \
                    ((b"hi\n", b"", 0), {"exists": True, "is_dir": True})
                await agent.shutdown()
        a.proc.wait(10)
        stderr = a.stderr()     # before stop(), which removes its directory
    finally:
        a.stop()
    assert "LAZY IMPORT" not in stderr, stderr
    assert (tmp_path / "back" / "d" / "f").read_text() == "x"
    assert a.proc.returncode == 0


async def test_shutdown_and_sigterm_kill_running_commands():
    for how in ("shutdown", "sigterm"):
        a = AgentProcess()
        try:
            with trio.fail_after(30):
                async with open_agent(a.socket, timeout=10) as agent:
                    async with agent.open_exec(["sh", "-c", "echo $$; sleep 300"]) as proc:
                        pid = int((await proc.receive()).strip())
                        if how == "shutdown":
                            async with open_agent(a.socket, timeout=10) as other:
                                await other.shutdown()
                        else:
                            a.proc.send_signal(signal.SIGTERM)
                        with pytest.raises(AgentError):
                            await proc.wait()
            assert a.proc.wait(10) == 0
            wait_until(lambda: process_gone(pid), 5, f"command of the stopped agent ({how})")
        finally:
            a.stop()


SERVE_AFTER_FORK = textwrap.dedent("""
    import os, sys, trio
    sys.path.insert(0, sys.argv[1])
    import agent.main
    trio.run(trio.sleep, 0)              # the parent uses trio (like PID 1 ...)
    r, w = os.pipe()
    pid = os.fork()                      # ... and forks outside trio.run
    if pid == 0:
        os.close(r)
        import ctypes                    # do not outlive the test's process
        ctypes.CDLL(None).prctl(1, 9)    # PR_SET_PDEATHSIG, SIGKILL
        os._exit(agent.main.serve({"transport": "unix", "path": sys.argv[2]}, ready_fd=w))
    os.close(w)
    line = f"ready byte {os.read(r, 1)!r}\\n"  # one write(): the child prints on this pipe too
    sys.stdout.write(line)
    sys.stdout.flush()
    print("exit", os.waitpid(pid, 0)[1] >> 8, flush=True)

    async def inside():                  # forking inside trio.run is refused clearly
        try:
            agent.main.serve({"transport": "unix", "path": sys.argv[2]})
        except RuntimeError as e:
            print("refused:", e, flush=True)
    trio.run(inside)
""")


async def test_serve_from_a_process_that_imported_trio(tmp_path):
    sock = f"/tmp/kagent-fork-{os.getpid()}.sock"
    proc = await trio.lowlevel.open_process([sys.executable, "-c", SERVE_AFTER_FORK, str(ROOT), sock],
                                            stdout=subprocess.PIPE)
    try:
        with trio.fail_after(30):
            out = b""
            while b"\n" not in out.partition(b"ready byte")[2]:      # the whole line
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, out
                out += chunk
            assert b"ready byte b'R'" in out
            async with open_agent(sock, timeout=10) as agent:
                assert (await agent.exec(["echo", "forked"])).stdout == b"forked\n"
                await agent.shutdown()
            rest = b""
            while b"fresh interpreter" not in out + rest:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, rest
                rest += chunk
            await proc.wait()
    finally:
        proc.kill()
        await proc.wait()
        if os.path.exists(sock):
            os.unlink(sock)
    rest = out + rest
    assert b"exit 0" in rest and b"fork before trio.run()" in rest
    assert protocol.AGENT_READY.encode() in rest


# --- transports ------------------------------------------------------------------------

def _plug_in_host(dev_fd):
    """Replace what the fake port's fd points at by a fresh connection (the host came
    back: same fd, new peer), and send SIGIO as the virtio_console driver does."""
    guest, host = socket.socketpair()
    guest.setblocking(False)
    os.dup2(guest.fileno(), dev_fd)
    guest.close()
    os.kill(os.getpid(), signal.SIGIO)
    return trio.SocketStream(trio.socket.from_stdlib_socket(host))


@pytest.fixture
def sigio_ignored():
    """A SIGIO that arrives after the transport stopped listening must not kill pytest
    (its default action ends the process, which hides a failing test's report)."""
    old = signal.signal(signal.SIGIO, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGIO, old)


async def test_serial_transport_survives_the_host_leaving_and_coming_back(sigio_ignored):
    """virtio-serial semantics on a fake port: one fd for the agent's life; when the
    host leaves, reads return 0 and poll says POLLHUP; when it comes back, SIGIO.
    (A socketpair behaves that way; dup2 swaps in the next "host" on the same fd.)"""
    guest, host = socket.socketpair()
    dev_fd = os.dup(guest.fileno())
    guest.close()
    os.set_blocking(dev_fd, False)
    transport = transports.SerialTransport("/fake/port")
    transport.fd = dev_fd
    agent = Agent()
    ended_tx, ended = trio.open_memory_channel(10)

    async def serve(stream):
        await agent.serve_stream(stream)
        await ended_tx.send("connection ended")

    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(transport.run, serve)
                # host 1 runs a command and leaves in the middle of it
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(host))
                async with open_agent_stream(stream, timeout=5) as a:
                    assert (await a.exec(["echo", "one"])).stdout == b"one\n"
                    async with a.open_exec(["sh", "-c", "echo $$; sleep 300"]) as proc:
                        pid = int((await proc.receive()).strip())
                        await stream.aclose()
                assert await ended.receive() == "connection ended"
                while not process_gone(pid):
                    await trio.sleep(0.01)
                # nobody connected: the agent waits for SIGIO, it does not spin
                cpu = time.process_time()
                await trio.sleep(0.5)
                assert time.process_time() - cpu < 0.1
                # host 2 dies half-way through a frame
                s2 = _plug_in_host(dev_fd)
                await s2.send_all(wire.MAGIC + wire.encode(wire.client_hello(wire.new_nonce())))
                assert await s2.receive_some(65536)
                await s2.send_all(wire.encode(["open", 1, {"op": "stat", "path": "/"}])[:7])
                await s2.aclose()
                assert await ended.receive() == "connection ended"   # it read the half frame
                # host 3 gets a clean connection on the same fd
                s3 = _plug_in_host(dev_fd)
                async with open_agent_stream(s3, timeout=5) as a:
                    assert (await a.exec(["echo", "three"])).stdout == b"three\n"
                    assert (await a.stat("/")).type == "dir"
                nursery.cancel_scope.cancel()
    finally:
        os.close(dev_fd)


async def test_serial_send_to_a_departed_host_fails_instead_of_spinning():
    guest, host = socket.socketpair()
    guest.setblocking(False)
    guest.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    stream = transports.SerialStream(guest.fileno())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async def fill():
                with pytest.raises(trio.BrokenResourceError, match="disconnected"):
                    await stream.send_all(b"x" * (4 << 20))    # blocks: nobody reads

            nursery.start_soon(fill)
            await trio.testing.wait_all_tasks_blocked()        # fill() waits for room
            host.close()                                        # the host goes away
    assert await stream.receive_some(100) == b""
    guest.close()


def test_vsock_listener_binds():
    """vsock cannot carry a connection on these machines (no /dev/vhost-vsock, no vsock
    loopback), so only the listening side is checked; it shares the accept loop with
    the unix socket transport, which the other tests exercise."""
    t = transports.make_transport("vsock", port=40000 + os.getpid() % 20000)
    t.open()
    try:
        family = t.sock.family
        cid, port = t.sock.getsockname()
        assert family == socket.AF_VSOCK and cid == socket.VMADDR_CID_ANY and port == t.port
    finally:
        t.close()
    assert transports.make_transport("vsock").port == 2222
    assert transports.make_transport("serial").path == "/dev/virtio-ports/org.kindling.agent.0"
