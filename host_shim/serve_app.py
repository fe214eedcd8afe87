"""The ASGI application of `kindling serve`: hypeman's REST paths over the Python API.

Starlette (routing, requests, streaming responses) on anyio, which runs on
trio -- the event loop of the rest of Kindling -- under hypercorn's trio worker
(host_shim/serve.py).  Every operation is a method of `Kindling` (host_shim/api.py): no
second implementation.  Those methods are synchronous (each runs its own trio loop and
does blocking file I/O), so each request runs its call in a worker thread
(`trio.to_thread`): a create, restore, fork or wait that takes a minute blocks no other
request.  The host model is safe for that: every read-modify-write of an instance is
under its flock (host_shim/locks.py), taken per open file description, so threads of one
process exclude each other exactly as separate `kindling` processes do.

Errors: hypeman's body {"code", "message"} with its status codes -- 404 an unknown
instance or volume (NotFound), 409 an operation the instance's state refuses or a name
in use (Conflict), 401 no or a bad token, 400 malformed JSON or a bad value, 413 a body
over MAX_BODY (read_body), 422 a field Kindling cannot honour (serve_wire.UNSUPPORTED), 504
a copy to or from the guest not done within serve_extras.COPY_TIMEOUT (TimedOut).  Error
responses carry `x-should-retry: false` (hypeman's SDK otherwise retries 409s and 5xxs,
and a create is not idempotent).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
from functools import partial

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import serve_openapi, serve_wire as wire
from .api import Kindling
from .errors import Conflict, KindlingError, NotFound, TimedOut
from .serve_auth import Auth
from .serve_extras import Extras
from .serve_store import Store
from .serve_wire import MAX_BODY, ApiError, bad_request, read_json

MAX_WAIT = 300.0                 # hypeman caps GET /wait at 5 minutes
DEFAULT_WAIT = 60.0
THREADS = 128                    # concurrent host-model calls (a wait holds one for minutes)
STATUS_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found",
                405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
                422: "unsupported_field", 500: "internal_error", 504: "timeout"}


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status,
                        headers={"x-should-retry": "false"})


def _kindling_error(e: KindlingError) -> JSONResponse:
    message = f"{e.message} ({e.hint})" if e.hint else e.message
    status = 404 if isinstance(e, NotFound) else 409 if isinstance(e, Conflict) \
        else 504 if isinstance(e, TimedOut) else 400
    return error_response(status, STATUS_CODES[status], message)


class Server:
    """The routes' handlers, on one Kindling (one $KINDLING_HOME)."""

    def __init__(self, kindling: Kindling, auth: Auth):
        self.k = kindling
        self.auth = auth
        self.limiter = trio.CapacityLimiter(THREADS)

    async def call(self, fn, *args, **kwargs):
        """A Kindling method in a worker thread."""
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=self.limiter)

    # --- instances -------------------------------------------------------------------------

    async def list_instances(self, request: Request):
        wanted = request.query_params.get("state")
        infos = await self.call(self.k.list)
        return JSONResponse([wire.instance_json(i) for i in infos
                             if wanted is None or str(i.state) == wanted])

    async def create_instance(self, request: Request):
        kwargs = wire.create_kwargs(await read_json(request))
        info = await self.call(self.k.create, kwargs.pop("command"), **kwargs)
        return JSONResponse(wire.instance_json(info), status_code=201)

    async def get_instance(self, request: Request):
        return await self._operation(request, self.k.inspect)

    async def delete_instance(self, request: Request):
        await self.call(self.k.delete, _id(request))
        return Response(status_code=204)

    async def start(self, request: Request):
        again = "Kindling's start boots the command the instance was created with"
        return await self._operation(request, self.k.start, {"cmd": again, "entrypoint": again})

    async def stop(self, request: Request):
        return await self._operation(request, self.k.stop)

    async def standby(self, request: Request):
        plain = "Kindling's snapshots are not compressed"
        return await self._operation(request, self.k.standby,
                                     {"compression": plain, "compression_delay": plain})

    async def restore(self, request: Request):
        return await self._operation(request, self.k.restore)

    async def _operation(self, request: Request, method, refused: dict[str, str] | None = None):
        """`method` on the instance, answered with its JSON; `refused`: the body's fields
        Kindling cannot honour (422 naming them), read only when given."""
        if refused:
            wire.refuse_unsupported(await read_json(request), refused)
        return JSONResponse(wire.instance_json(await self.call(method, _id(request))))

    async def fork(self, request: Request):
        body = await read_json(request)
        name = wire.required_string(body, "name")
        from_running = bool(wire.typed(body, "from_running", bool, "true or false"))
        target = body.get("target_state")
        if target not in (None, "Stopped", "Standby", "Running"):
            raise bad_request(f"target_state: expected Stopped, Standby or Running, got {target!r}")
        info = await self.call(self.k.fork, _id(request), name, from_running=from_running,
                               target_state=target)
        return JSONResponse(wire.instance_json(info), status_code=201)

    async def wait(self, request: Request):
        ref, target = _id(request), request.query_params.get("state")
        timeout = go_duration("timeout", request.query_params.get("timeout"), DEFAULT_WAIT)
        if target not in {"Running", "Stopped", "Standby", "Paused", "Created", "Initializing",
                          "Shutdown", "Unknown"}:
            raise bad_request(f"state: expected an instance state such as Running, got {target!r}")
        info = await self.call(self.k.inspect, ref)
        if str(info.state) == target:
            return JSONResponse(wire.wait_json(info, False))
        if target not in ("Running", "Stopped"):
            raise wire.unsupported("state", f"Kindling waits for Running or Stopped (the "
                                            f"instance is {info.state})")
        try:
            info, timed_out = await self.call(self.k.wait_at_most, ref, target,
                                              min(timeout, MAX_WAIT))
        except NotFound:
            raise
        except KindlingError as e:          # it stopped before it was Running: say why
            return JSONResponse(wire.wait_json(await self.call(self.k.inspect, ref), False,
                                               e.message))
        return JSONResponse(wire.wait_json(info, timed_out))

    async def logs(self, request: Request):
        source = request.query_params.get("source", "app")
        if source not in ("app", "vmm"):
            raise wire.unsupported("source", f"Kindling's log sources are app and vmm, "
                                             f"not {source!r}")
        tail = _count(request.query_params.get("tail"), "tail")
        if request.query_params.get("follow", "false") == "true":
            await self.call(self.k.inspect, _id(request))     # 404 before the stream starts
            return self._follow(_id(request), source)
        lines = await self.call(self.k.logs, _id(request), source)
        lines = lines[-tail:] if tail is not None else lines
        return StreamingResponse(iter([sse(line) for line in lines]),
                                 media_type="text/event-stream")

    def _follow(self, ref: str, source: str) -> StreamingResponse:
        """Lines as they come, until the VM stops or the client goes: `Kindling.logs`
        follows in its own thread (it can run for days: not one of the limiter's)."""
        send, receive = trio.open_memory_channel(math.inf)
        token, gone = trio.lowlevel.current_trio_token(), threading.Event()

        def put(item) -> None:
            with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                send.send_nowait(item)

        def on_line(line: str) -> None:
            if gone.is_set():
                raise ClientGone          # ends Kindling.logs in that thread
            token.run_sync_soon(put, line)

        def follow() -> None:
            with contextlib.suppress(ClientGone, KindlingError, trio.RunFinishedError):
                self.k.logs(ref, source, follow=True, on_line=on_line)
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(send.close)

        async def lines():
            try:
                async for line in receive:
                    yield sse(line)
            finally:
                gone.set()
        threading.Thread(target=follow, name=f"logs {ref}", daemon=True).start()
        return StreamingResponse(lines(), media_type="text/event-stream")

    async def stat(self, request: Request):
        path = request.query_params.get("path")
        if not path:
            raise bad_request("path: required, an absolute path in the guest")
        follow = request.query_params.get("follow_links", "false") == "true"
        result = await self.call(self.k.stat, _id(request), path, follow=follow)
        return JSONResponse(wire.path_info_json(result))

    async def health(self, request: Request):
        return JSONResponse({"status": "ok"})

    async def openapi(self, request: Request):
        """docs/openapi.json, byte for byte (no token needed: it is documentation)."""
        return Response(serve_openapi.text(), media_type="application/json")


class ClientGone(Exception):
    """The client of a followed log went away."""


def _id(request: Request) -> str:
    return request.path_params["id"]


def _count(text: str | None, field: str) -> int | None:
    if text is None:
        return None
    if not text.isdigit():
        raise bad_request(f"{field}: expected a whole number, got {text!r}")
    return int(text)


def sse(line: str) -> str:
    """One log line as a server-sent event; its data is a JSON string (the SDK decodes
    each event's data as JSON)."""
    return f"data: {json.dumps(line)}\n\n"


GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(field: str, text: str | None, default: float) -> float:
    """A Go duration ("30s", "2m", "1m30s") in seconds, as hypeman's API takes them.
    (A one-line grammar: a library for it would be heavier than the regex.)"""
    if text is None:
        return default
    parts = GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise bad_request(f"{field}: expected a duration such as 30s or 2m, got {text!r}")
    seconds = sum(float(n) * GO_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise bad_request(f"{field}: must be more than 0, got {text!r}")
    return seconds


# --- the application -------------------------------------------------------------------------

def _guarded(auth: Auth, handler):
    """`handler` behind the bearer-token check (401 with hypeman's body)."""
    async def endpoint(request: Request):
        if (why := auth.refusal(request.headers.get("authorization"))) is not None:
            response = error_response(401, "unauthorized", why)
            response.headers["www-authenticate"] = "Bearer"
            return response
        return await handler(request)
    return endpoint


def routes(server: Server) -> list[Route]:
    """hypeman's paths, and /openapi.json (host_shim/serve_openapi.py)."""
    g = partial(_guarded, server.auth)
    inst = "/instances/{id}"
    table = [
        ("/instances", "GET", server.list_instances), ("/instances", "POST", server.create_instance),
        (inst, "GET", server.get_instance), (inst, "DELETE", server.delete_instance),
        (inst + "/start", "POST", server.start), (inst + "/stop", "POST", server.stop),
        (inst + "/standby", "POST", server.standby), (inst + "/restore", "POST", server.restore),
        (inst + "/fork", "POST", server.fork), (inst + "/wait", "GET", server.wait),
        (inst + "/logs", "GET", server.logs), (inst + "/stat", "GET", server.stat),
    ]
    return [Route("/health", server.health, methods=["GET"]),
            Route("/openapi.json", server.openapi, methods=["GET"])] + [
        Route(path, g(handler), methods=[method]) for path, method, handler in table
    ] + Store(server).routes(g) + Extras(server).routes(g)


async def _on_api_error(request: Request, e: ApiError) -> JSONResponse:
    return error_response(e.status, e.code, e.message)


async def _on_kindling_error(request: Request, e: KindlingError) -> JSONResponse:
    return _kindling_error(e)


async def _on_http_exception(request: Request, e: HTTPException) -> JSONResponse:
    return error_response(e.status_code, STATUS_CODES.get(e.status_code, "error"), str(e.detail))


async def _on_other(request: Request, e: Exception) -> JSONResponse:
    return error_response(500, "internal_error", f"internal error: {type(e).__name__}: {e}")


def make_app(kindling: Kindling, auth: Auth) -> Starlette:
    return Starlette(routes=routes(Server(kindling, auth)),
                     exception_handlers={ApiError: _on_api_error,
                                         KindlingError: _on_kindling_error,
                                         HTTPException: _on_http_exception,
                                         Exception: _on_other})
