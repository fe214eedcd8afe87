"""A minimal QMP (QEMU Machine Protocol) client over the instance's unix socket."""

import array
import json
import os
import socket

import trio

from .errors import KindlingError


class QMPError(KindlingError):
    pass


class QMPClient:
    """Line-delimited JSON: a greeting, `qmp_capabilities`, then commands.

    Asynchronous events (lines with "event") are skipped.
    """

    def __init__(self, stream: trio.SocketStream):
        self._stream = stream
        self._buffer = b""

    @classmethod
    async def connect(cls, path: str | os.PathLike) -> "QMPClient":
        try:
            stream = await trio.open_unix_socket(os.fspath(path))
        except OSError as e:
            raise QMPError(f"cannot connect to QMP socket {path}: {e.strerror or e}") from None
        client = cls(stream)
        try:
            greeting = await client._receive()
            if "QMP" not in greeting:
                raise QMPError(f"unexpected QMP greeting: {greeting}")
            await client.execute("qmp_capabilities")
        except BaseException:
            await stream.aclose()
            raise
        return client

    async def _receive(self) -> dict:
        while b"\n" not in self._buffer:
            try:
                chunk = await self._stream.receive_some(65536)
            except (OSError, trio.BrokenResourceError) as e:
                raise QMPError(f"QMP connection lost ({e})") from None
            if not chunk:
                raise QMPError("QMP connection closed")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            raise QMPError(f"bad QMP message: {line[:200]!r}") from None

    async def execute(self, command: str, arguments: dict | None = None):
        message = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        try:
            await self._stream.send_all(json.dumps(message).encode() + b"\n")
        except (OSError, trio.BrokenResourceError) as e:
            raise QMPError(f"QMP {command} failed: connection lost ({e})") from None
        return await self._reply(command)

    async def _reply(self, command: str):
        while True:
            reply = await self._receive()
            if "event" in reply:
                continue
            if "error" in reply:
                err = reply["error"]
                raise QMPError(f"QMP {command} failed: {err.get('desc', err)}")
            return reply.get("return")

    async def send_fd(self, name: str, fd: int) -> None:
        """QMP `getfd`: hand QEMU the open file descriptor `fd` under `name` (SCM_RIGHTS
        ancillary data on the command's own message), for a later `fd:NAME` URI.  The
        name belongs to this connection's monitor: use it on the same client."""
        message = json.dumps({"execute": "getfd", "arguments": {"fdname": name}}).encode()
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
        try:
            sent = await self._stream.socket.sendmsg([message + b"\n"], rights)
        except OSError as e:
            raise QMPError(f"QMP getfd failed: connection lost ({e})") from None
        if sent != len(message) + 1:
            raise QMPError(f"QMP getfd: short write ({sent} of {len(message) + 1} bytes)")
        await self._reply("getfd")

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()


async def quit(path: str | os.PathLike) -> bool:
    """Ask QEMU to quit.  False when QEMU could not be reached; the caller still waits
    for the process to exit (and kills it if it does not).  Timeouts: at the call site."""
    try:
        client = await QMPClient.connect(path)
    except (QMPError, OSError, trio.BrokenResourceError):
        return False
    async with client:
        try:
            await client.execute("quit")
        except (QMPError, OSError, trio.BrokenResourceError):
            pass  # QEMU may close the socket while quitting, before it replies
    return True


async def execute(path: str | os.PathLike, command: str, arguments: dict | None = None):
    """Connect, run one command, disconnect.  Raises QMPError (also when QEMU cannot be
    reached).  Timeouts: at the call site."""
    try:
        client = await QMPClient.connect(path)
    except (OSError, trio.BrokenResourceError) as e:
        raise QMPError(f"cannot reach QMP at {path}: {e}") from None
    async with client:
        try:
            return await client.execute(command, arguments)
        except (OSError, trio.BrokenResourceError) as e:
            raise QMPError(f"QMP {command} failed: connection lost ({e})") from None


async def query_status(path: str | os.PathLike) -> str:
    """QEMU's run state (`running`, `prelaunch`, `paused`, `shutdown`, ...)."""
    reply = await execute(path, "query-status")
    status = reply.get("status") if isinstance(reply, dict) else None
    if not isinstance(status, str):
        raise QMPError(f"unexpected query-status reply: {reply!r}")
    return status
