"""Bearer-token auth of `kindling serve`, and where it may listen without one.

Two kinds of token, either or both: a plain token (the first line of --token-file,
compared in constant time) and hypeman's kind, an HS256 JWT signed with a shared
secret (--jwt-secret-file), checked with PyJWT -- signature, and `exp`, which it must
have.  With neither configured the server refuses to listen anywhere but a unix socket
or a loopback address (`check_listen`): an open API that boots VMs is a remote shell.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import jwt

from .errors import die


def _secret(path: Path | None, what: str) -> str | None:
    if path is None:
        return None
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        die(f"{what} {path}: cannot read it ({e.strerror})")
    except UnicodeDecodeError:
        die(f"{what} {path}: expected text (one line)")
    value = lines[0].strip() if lines else ""
    if not value:
        die(f"{what} {path}: it is empty", hint="put the token (or the secret) on its first line")
    return value


@dataclass(frozen=True)
class Auth:
    token: str | None = None
    jwt_secret: str | None = None

    @classmethod
    def from_files(cls, token_file: Path | None, jwt_secret_file: Path | None) -> "Auth":
        return cls(_secret(token_file, "--token-file"),
                   _secret(jwt_secret_file, "--jwt-secret-file"))

    @property
    def configured(self) -> bool:
        return self.token is not None or self.jwt_secret is not None

    def refusal(self, header: str | None) -> str | None:
        """None when the Authorization header is accepted, else why it is not."""
        if not self.configured:
            return None
        if not header:
            return "no token: send the header Authorization: Bearer TOKEN"
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            return "the Authorization header must be: Bearer TOKEN"
        if self.token is not None and hmac.compare_digest(value.encode(), self.token.encode()):
            return None
        if self.jwt_secret is None:
            return "invalid token"
        return self._jwt_refusal(value)

    def _jwt_refusal(self, value: str) -> str | None:
        try:
            jwt.decode(value, self.jwt_secret, algorithms=["HS256"],
                       options={"require": ["exp"]})
        except jwt.ExpiredSignatureError:
            return "the token has expired (its exp is past)"
        except jwt.InvalidTokenError as e:
            return f"invalid token ({e})"
        return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen(host: str | None, auth: Auth) -> None:
    """Without a token, only a unix socket (`host` None) or a loopback address."""
    if auth.configured or host is None or is_loopback(host):
        return
    die(f"refusing to listen on {host} without a token: anyone who reaches it could run "
        f"VMs on this host",
        hint="give --token-file FILE or --jwt-secret-file FILE, or listen on 127.0.0.1 or "
             "a unix socket (--unix PATH)")
