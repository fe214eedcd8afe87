"""A real `kindling serve` process for tests, and raw HTTP requests to it (http.client).

    with KindlingServer(home, token="t") as server:
        status, headers, body = server.request("GET", "/instances", token="t")
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.oci_fixtures import free_port
from tests.vm import ROOT

JWT_SECRET = "a-shared-secret-of-at-least-32-bytes!"


class KindlingServer:
    def __init__(self, home: Path, *, token: str | None = None, jwt_secret: str | None = None,
                 extra_env: dict | None = None):
        self.home = Path(home)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = self.home / "serve.log"
        args = [sys.executable, "-m", "host_shim.cli", "serve", "--listen", f"127.0.0.1:{self.port}"]
        for flag, value in (("--token-file", token), ("--jwt-secret-file", jwt_secret)):
            if value is not None:
                path = self.home / flag.strip("-")
                path.write_text(value + "\n")
                args += [flag, str(path)]
        self.args = args
        self.env = dict(os.environ, KINDLING_HOME=str(self.home), KINDLING_ACCEL="tcg",
                        **(extra_env or {}))
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "KindlingServer":
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 60) -> None:
        """Poll GET /health until the server answers (it is listening then)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"kindling serve exited:\n{self.log.read_text()}"
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no /health in {timeout}s:\n{self.log.read_text()}"
            time.sleep(0.05)       # polling for the listening socket, not a fixed wait

    def request(self, method: str, path: str, body: bytes | dict | None = None, *,
                token: str | None = None, headers: dict | None = None, timeout: float = 120):
        """(status, headers, parsed JSON or the raw bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            sent = dict(headers or {})
            if token is not None:
                sent["Authorization"] = f"Bearer {token}"
            if isinstance(body, dict):
                body = json.dumps(body).encode()
                sent.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            data = response.read()
            kind = response.getheader("content-type") or ""
            parsed = json.loads(data) if kind.startswith("application/json") else data
            return response.status, dict(response.getheaders()), parsed
        finally:
            conn.close()

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def exec_ws(base_url: str, ref: str, request: dict, token: str | None, timeout: float = 300):
    """`WS /kindling/instances/{ref}/exec` (host_shim/serve_extras.py): (stdout, stderr,
    the final message), or the websockets error when the server refuses the connection."""
    from websockets.sync.client import connect
    url = base_url.replace("http://", "ws://") + f"/kindling/instances/{ref}/exec"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    out = {1: b"", 2: b""}
    with connect(url, additional_headers=headers, open_timeout=60) as ws:
        ws.send(json.dumps(request))
        while True:
            message = ws.recv(timeout=timeout)
            if isinstance(message, str):
                return out[1], out[2], json.loads(message)
            out[message[0]] += message[1:]


def post_oversized(port: int, path: str, body: bytes, token: str):
    """POST `body` over a raw socket and read the answer even when the server answers (and
    closes) before the body is all sent, as it may for a body over its limit: (status,
    parsed JSON)."""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            sock.sendall(head + body)
        except (BrokenPipeError, ConnectionResetError):
            pass                        # the server answered early: read what it said
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read())
