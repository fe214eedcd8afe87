"""`kindling serve`: hypeman's REST API over this host's Kindling (host_shim/serve_app.py).

The server is hypercorn, run by its trio worker (`hypercorn.trio.serve`) in the same
event-loop library as the rest of Kindling; the application is Starlette, whose anyio
base runs on trio.  Both are kept, packaged libraries (PyPI; hypercorn and starlette are
in Debian too): hypercorn is the ASGI server that supports trio natively, Starlette the
smallest ASGI framework with routing and streaming responses.
SIGTERM and SIGINT end it cleanly (systemd stops the unit with SIGTERM).  The server's
libraries are imported only by `kindling serve` itself: every other command starts as fast
as before.
"""

from __future__ import annotations

import argparse
import signal
import sys
from functools import partial
from pathlib import Path

import trio

from .errors import die

DEFAULT_LISTEN = "127.0.0.1:4973"      # hypeman's port


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        die(f"--listen {text!r}: expected ADDR:PORT, such as 127.0.0.1:4973 or [::1]:4973")
    return host.strip("[]"), int(port)


def add_command(sub, command) -> None:
    """`kindling serve`, registered by cli.py with its `_command` helper."""
    p = command(sub, "serve", cmd_serve, "serve hypeman's REST API for this host",
                description="An HTTP API with hypeman's paths and shapes over this host's "
                            "instances, volumes and images (README: what is served, what is "
                            "refused).  Without a token it listens only on loopback or a "
                            "unix socket.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--listen", metavar="ADDR:PORT", default=None,
                       help=f"TCP address to listen on (default: {DEFAULT_LISTEN})")
    where.add_argument("--unix", metavar="PATH", type=Path, default=None,
                       help="listen on this unix socket instead")
    p.add_argument("--token-file", metavar="FILE", type=Path, default=None,
                   help="accept the bearer token on this file's first line")
    p.add_argument("--jwt-secret-file", metavar="FILE", type=Path, default=None,
                   help="accept HS256 JWTs (with exp) signed with the secret on this file's "
                        "first line, as hypeman's")


def bind_of(args: argparse.Namespace, auth) -> str:
    """hypercorn's bind string, after the no-token rule (serve_auth.check_listen)."""
    from .serve_auth import check_listen
    if args.unix is not None:
        check_listen(None, auth)
        return f"unix:{args.unix}"
    host, port = parse_listen(args.listen or DEFAULT_LISTEN)
    check_listen(host, auth)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _serve(app, bind: str) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [bind]
    config.errorlog = "-"
    stop = trio.Event()

    async def shutdown_trigger():
        await stop.wait()

    async with trio.open_nursery() as nursery:
        async def on_signals():
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    stop.set()
                    return
        nursery.start_soon(on_signals)
        await serve(app, config, shutdown_trigger=shutdown_trigger)
        nursery.cancel_scope.cancel()


def cmd_serve(args: argparse.Namespace) -> int:
    from .api import Kindling
    from .serve_app import make_app
    from .serve_auth import Auth

    auth = Auth.from_files(args.token_file, args.jwt_secret_file)
    bind = bind_of(args, auth)
    kindling = Kindling()
    print(f"kindling serve: {kindling.home} on {bind}"
          f"{'' if auth.configured else ' (no token: local clients only)'}",
          file=sys.stderr, flush=True)
    trio.run(partial(_serve, make_app(kindling, auth), bind))
    return 0
