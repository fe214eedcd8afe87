"""A registry that needs TLS and credentials, for the tests: a test PKI, an htpasswd
file, and a small token server.

- `make_pki(dir)`: a test CA and a server certificate for 127.0.0.1 signed by it
  (openssl argv); `cert_dir` holds only ca.crt, what `--cert-dir` is given.  Nothing
  goes into the host's trust store.
- `htpasswd_file(path, user, password)`: bcrypt, the only scheme docker-registry
  accepts (`htpasswd -B` from apache2-utils).
- `TokenServer`: docker-registry's `auth: token` needs a token server.  This one is
  written here (the distribution token protocol is one GET, and no JWT library is
  installed): it checks basic auth against one user and answers a JWT (RS256, its
  x5c the signing certificate, which the registry's rootcertbundle trusts) granting
  the scopes asked for.  The signature is openssl's (`openssl dgst -sha256 -sign`).
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from image_build.run import run

TIMEOUT = 60
SERVICE = "kindling-test-registry"
ISSUER = "kindling-test-issuer"


@dataclass(frozen=True)
class PKI:
    ca: Path
    server_cert: Path
    server_key: Path
    cert_dir: Path          # only ca.crt: what --cert-dir gets


def _openssl(*args) -> None:
    run(["openssl", *args], timeout=TIMEOUT)


def make_pki(work: Path) -> PKI:
    work.mkdir(parents=True, exist_ok=True)
    cert_dir = work / "ca"
    cert_dir.mkdir()
    ca, ca_key = cert_dir / "ca.crt", work / "ca.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
             "-days", "2", "-subj", "/CN=kindling test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    key, csr, cert = work / "server.key", work / "server.csr", work / "server.crt"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
             "-subj", "/CN=127.0.0.1")
    ext = work / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", "2", "-extfile", ext)
    return PKI(ca, cert, key, cert_dir)


def htpasswd_file(path: Path, user: str, password: str) -> Path:
    line = run(["htpasswd", "-nbB", user, password], timeout=TIMEOUT).stdout.strip()
    path.write_text(line + "\n")
    return path


def auth_file(path: Path, registry: str, user: str, password: str) -> Path:
    """containers-auth.json with USER:PASS for `registry` (what `skopeo login` writes)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {registry: {"auth": token}}}))
    path.chmod(0o600)
    return path


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """https://127.0.0.1:PORT/token for one user; `requests` counts the token requests."""

    def __init__(self, work: Path, pki: PKI, user: str, password: str):
        self.key, self.cert = work / "token.key", work / "token.crt"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key,
                 "-out", self.cert, "-days", "2", "-subj", "/CN=kindling test token signer")
        pem = self.cert.read_text()     # x5c: the certificate's DER, base64 (PEM's body)
        self.x5c = "".join(line for line in pem.splitlines() if "CERTIFICATE" not in line)
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.user = user
        self.requests = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.realm = f"https://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def token(self, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": ISSUER, "sub": self.user, "aud": SERVICE, "exp": now + 600,
                  "nbf": now - 60, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signing_input.encode(), capture_output=True,
                                   check=True, timeout=TIMEOUT).stdout
        return f"{signing_input}.{_b64(signature)}"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):          # noqa: N802 (http.server's name)
                server.requests += 1
                if self.headers.get("Authorization") != server.expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="token"')
                    self.end_headers()
                    return
                scopes = parse_qs(urlparse(self.path).query).get("scope", [])
                body = json.dumps({"token": server.token(scopes), "expires_in": 600}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler

    def registry_auth(self) -> dict:
        """docker-registry's `auth:` section trusting this server's tokens."""
        return {"token": {"realm": self.realm, "service": SERVICE, "issuer": ISSUER,
                          "rootcertbundle": str(self.cert)}}

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
