"""Kindling's own operations on `kindling serve`, under /kindling/ (hypeman has none of
these paths): exec streamed over a WebSocket, copy in and out as tar archives, and the
boot timeline as JSON and SVG.  Each is the Python API's method (host_shim/api.py).

exec, `WS /kindling/instances/{id}/exec`: the client's first message is JSON
{"argv": [...], "env": {...}, "workdir", "user", "tty", "stdin" (text), "timeout"};
the server sends the output as it comes, binary messages whose first byte says the
stream (1 stdout, 2 stderr), then one text message {"exit_code": N} (or {"error": ...})
and closes.  stdin is given whole up front (`Kindling.exec_stream` takes it so).

copy: `PUT /kindling/instances/{id}/files?path=/dest[&mode=0644]` with a file's bytes
as the body (at most MAX_UPLOAD) makes it /dest in the guest -- one file per request: a
tar of a tree would have to be unpacked on the host first, and Python 3.11.2's tarfile
has no safe-extraction filter.  `GET ...?path=/src` answers a file's bytes, or a tar of
a directory (packed here from what `copy_out` wrote, which already refuses '..' names,
writes through symlinks and setuid bits).  A copy the agent has not finished within
COPY_TIMEOUT is cancelled in its worker thread's own trio loop (Kindling.copy_in/out's
`timeout`: the thread itself cannot be cancelled from here) and answered 504.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tarfile
import tempfile
from functools import partial
from pathlib import Path

import trio
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from . import chart
from .errors import KindlingError, kindling_error_in
from .serve_wire import ApiError, bad_request

MAX_UPLOAD = 1 << 30
COPY_TIMEOUT = 600.0       # s, generous: a copy the agent has not done by then is 504, not a
                           # worker thread held for ever by a hung guest
STDOUT, STDERR = 1, 2


class Extras:
    """The /kindling/ handlers, on a serve_app.Server (its Kindling, its threads, its auth)."""

    def __init__(self, server):
        self.server = server
        self.k = server.k

    # --- the boot timeline -----------------------------------------------------------------

    async def timeline(self, request: Request):
        info = await self.server.call(self.k.analyze, request.path_params["id"])
        return JSONResponse({"id": info.id, "name": info.name, "boot": info.boot,
                             "time_to_running": info.time_to_running,
                             "timeline": info.timeline.to_json()})

    async def timeline_svg(self, request: Request):
        info = await self.server.call(self.k.analyze, request.path_params["id"])
        return Response(chart.render_instance(info), media_type="image/svg+xml")

    # --- copy ------------------------------------------------------------------------------

    async def copy_in(self, request: Request):
        remote, mode = _guest_path(request), _mode(request)
        work = Path(tempfile.mkdtemp(prefix="kindling-serve-"))
        try:
            upload = work / (Path(remote).name or "upload")
            await _receive_to(request, upload)
            upload.chmod(mode)
            result = await self.server.call(self.k.copy_in, request.path_params["id"], upload,
                                            remote, timeout=COPY_TIMEOUT)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return JSONResponse({"entries": result.entries, "bytes": result.bytes,
                             "skipped": result.skipped})

    async def copy_out(self, request: Request):
        remote = _guest_path(request)
        work = Path(tempfile.mkdtemp(prefix="kindling-serve-"))
        try:
            local = work / (Path(remote).name or "root")
            await self.server.call(self.k.copy_out, request.path_params["id"], remote, local,
                                   timeout=COPY_TIMEOUT)
            tree = local.is_dir()
            if tree:
                local = await trio.to_thread.run_sync(_pack, local, work / "download.tar")
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return FileResponse(local, media_type="application/x-tar" if tree
                            else "application/octet-stream",
                            background=BackgroundTask(shutil.rmtree, work, ignore_errors=True))

    # --- exec over a WebSocket -------------------------------------------------------------

    async def exec(self, websocket: WebSocket):
        why = self.server.auth.refusal(websocket.headers.get("authorization"))
        if why is not None:
            await websocket.close(code=1008, reason=why[:120])
            return
        await websocket.accept()
        try:
            request = exec_request(await websocket.receive_text())
            await self._exec(websocket, websocket.path_params["id"], request)
        except WebSocketDisconnect:
            return
        except (ApiError, KindlingError) as e:
            await websocket.send_text(json.dumps({"error": e.message}))
        except BaseExceptionGroup as group:      # from _exec's nursery
            if (e := kindling_error_in(group)) is None:
                raise
            await websocket.send_text(json.dumps({"error": e.message}))
        await websocket.close()

    async def _exec(self, websocket: WebSocket, ref: str, request: dict) -> None:
        send, receive = trio.open_memory_channel(math.inf)
        token = trio.lowlevel.current_trio_token()

        def sink(stream: int, data: bytes) -> None:
            token.run_sync_soon(_put, send, bytes([stream]) + data)

        async def forward():
            async for frame in receive:
                await websocket.send_bytes(frame)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            try:
                result = await self.server.call(self.k.exec_stream, ref, request.pop("argv"),
                                                on_stdout=partial(sink, STDOUT),
                                                on_stderr=partial(sink, STDERR), **request)
            finally:
                token.run_sync_soon(send.close)   # after the output queued before it
        await websocket.send_text(json.dumps({"exit_code": result.code, "error": result.error}))

    def routes(self, guarded) -> list:
        base = "/kindling/instances/{id}"
        return [Route(f"{base}/timeline", guarded(self.timeline), methods=["GET"]),
                Route(f"{base}/timeline.svg", guarded(self.timeline_svg), methods=["GET"]),
                Route(f"{base}/files", guarded(self.copy_in), methods=["PUT"]),
                Route(f"{base}/files", guarded(self.copy_out), methods=["GET"]),
                WebSocketRoute(f"{base}/exec", self.exec)]


def _put(send, item) -> None:
    with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
        send.send_nowait(item)


EXEC_FIELDS = {"argv", "env", "workdir", "user", "tty", "stdin", "timeout"}


def exec_request(text: str) -> dict:
    """The exec message as exec_stream's keywords (the API checks their values)."""
    try:
        request = json.loads(text)
    except ValueError as e:
        raise bad_request(f"the exec request must be JSON: {e}") from None
    if not isinstance(request, dict) or "argv" not in request:
        raise bad_request('the exec request must be an object with "argv"')
    if unknown := sorted(set(request) - EXEC_FIELDS):
        raise bad_request(f"unknown field{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
    return request


def _guest_path(request: Request) -> str:
    path = request.query_params.get("path", "")
    if not path.startswith("/"):
        raise bad_request(f"path: expected an absolute path in the guest, got {path!r}")
    return path


async def _receive_to(request: Request, path: Path) -> None:
    """The request body into `path`, at most MAX_UPLOAD bytes (413 past that)."""
    size = 0
    with open(path, "wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_UPLOAD:
                raise ApiError(413, "payload_too_large",
                               f"the file is larger than {MAX_UPLOAD} bytes")
            await trio.to_thread.run_sync(f.write, chunk)


def _mode(request: Request) -> int:
    text = request.query_params.get("mode", "0644")
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o7777:
        raise bad_request(f"mode: expected octal permissions such as 0644, got {text!r}")
    return mode


def _pack(local: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w") as tar:
        tar.add(local, arcname=local.name)
    return archive

