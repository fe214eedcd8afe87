"""How a pull reaches its registry: TLS and credentials, as skopeo's flags.

- TLS: https, verified, by default.  `cert_dir` is a directory of CA certificates
  (`*.crt`) trusted for this pull only (skopeo's --cert-dir / --src-cert-dir, no
  change to the host's trust store); `insecure` is plain http or unverified https.
- Credentials: `authfile` (containers-auth.json, what `skopeo login` writes), or
  `creds` USER:PASS, which Kindling writes into a 0600 authfile of its own for the
  call and deletes after, so the password never is on an argv that `ps` shows.
  With neither, skopeo looks as it always does: $REGISTRY_AUTH_FILE, else
  ${XDG_RUNTIME_DIR}/containers/auth.json, ~/.config/containers/auth.json and
  ~/.docker/config.json.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from image_build.errors import BuildError


@dataclass(frozen=True)
class Access:
    insecure: bool = False
    cert_dir: Path | None = None
    authfile: Path | None = None
    creds: str | None = None        # USER:PASS; only in memory and in a 0600 temp authfile

    def __repr__(self) -> str:      # never show the password in a log or traceback
        return (f"Access(insecure={self.insecure}, cert_dir={self.cert_dir}, "
                f"authfile={self.authfile}, creds={'<hidden>' if self.creds else None})")

    def check(self) -> None:
        """A BuildError naming the option whose value is wrong."""
        if self.cert_dir is not None and not Path(self.cert_dir).is_dir():
            raise BuildError(f"--cert-dir {self.cert_dir}: no such directory (expected a "
                             "directory of CA certificates named *.crt)")
        if self.authfile is not None and not Path(self.authfile).is_file():
            raise BuildError(f"--authfile {self.authfile}: no such file (expected a "
                             "containers-auth.json file, as `skopeo login` writes)")
        if self.creds is None:
            return
        if self.authfile is not None:
            raise BuildError("--creds and --authfile: give one of them, not both")
        user, sep, _ = self.creds.partition(":")
        if not user or not sep:
            raise BuildError("--creds: expected USER:PASS")

    def flags(self, prefix: str = "--") -> list[str]:
        """skopeo's flags: prefix `--` for inspect, `--src-` for copy's source."""
        argv = [f"{prefix}tls-verify=false"] if self.insecure else []
        if self.cert_dir is not None:
            argv += [f"{prefix}cert-dir", os.fspath(self.cert_dir)]
        if self.authfile is not None:
            argv += [f"{prefix}authfile", os.fspath(self.authfile)]
        return argv


def auth_json(registry: str, creds: str) -> dict:
    """containers-auth.json holding `creds` (USER:PASS) for `registry`."""
    return {"auths": {registry: {"auth": base64.b64encode(creds.encode()).decode()}}}


@contextlib.contextmanager
def resolved(access: Access, registry: str):
    """`access` checked, with its creds (if any) in a 0600 temp authfile for the block."""
    access.check()
    if access.creds is None:
        yield access
        return
    fd, path = tempfile.mkstemp(prefix="kindling-auth-", suffix=".json")   # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(auth_json(registry, access.creds), f)
        yield replace(access, creds=None, authfile=Path(path))
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
