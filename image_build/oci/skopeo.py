"""The skopeo calls (registry v2, OCI layout, oci-archive, docker-archive) and their
failures as messages that name the reference and say what went wrong.

skopeo verifies every blob against its digest while copying and writes a blob
under its final name only once it is verified; its `--command-timeout` bounds a
registry that does not answer.  What it prints on failure is matched here
(`explain`), because it exits 1 for every kind of error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from image_build.errors import BuildError
from image_build.run import DEVNULL, CommandError, run

from . import refs
from .access import Access

COMMAND_TIMEOUT = 600          # seconds for one skopeo call (--command-timeout)
INSPECT_TIMEOUT = 60
RUN_SLACK = 30                 # our own kill, after skopeo's own timeout
HOST_OS, HOST_ARCH = "linux", "amd64"

_REFUSED = ("the registry {registry} refused access: wrong or missing credentials (give "
            "--creds USER:PASS or --authfile FILE); nothing was kept")
# (phrase in skopeo's output, what it means; {registry} is the reference's); the first match wins
_CAUSES = (
    ("no space left on device", "disk full (no space left on device) while storing it; nothing was kept"),
    ("did not match", "a blob's content does not match its digest (corrupt or tampered); refused, nothing was kept"),
    ("digest mismatch", "a blob's content does not match its digest (corrupt or tampered); refused, nothing was kept"),
    ("manifest unknown", "no such image or tag in the registry"),
    ("name unknown", "no such image or tag in the registry"),
    ("not found", "no such image or tag"),
    ("invalid username/password", _REFUSED),
    ("unauthorized", _REFUSED),
    ("denied", _REFUSED),
    ("http response to https client", "the registry speaks plain http: name it with --insecure-registry HOST if you trust it"),
    ("x509", "the registry {registry}'s TLS certificate was not accepted (trust its CA "
             "with --cert-dir DIR, a directory of *.crt files)"),
    ("connection refused", "the registry is down or not listening (connection refused)"),
    ("no such host", "the registry's host name does not resolve"),
    ("deadline exceeded", "the registry did not answer in time"),
    ("i/o timeout", "the registry did not answer in time"),
    ("timed out", "the registry did not answer in time"),
    ("no route to host", "the registry is unreachable (no route to host)"),
    ("connection reset", "the registry closed the connection"),
)


def explain(ref: str, error: CommandError) -> BuildError:
    """The error naming `ref`, with the cause found in skopeo's output (and its tail)."""
    text = error.output.lower()     # empty when skopeo could not start: then the summary says why
    cause = next((why for phrase, why in _CAUSES if phrase in text), error.summary)
    cause = cause.replace("{registry}", refs.registry_of(ref))
    return BuildError(f"image {ref}: {cause}\n{error.details()}")


def _base(timeout: float) -> list[str]:
    return ["skopeo", "--command-timeout", f"{int(timeout)}s"]


def inspect_raw(ref: str, transport_ref: str, *, access: Access = Access(),
                timeout: float | None = None) -> dict:
    """The manifest or index as the source has it (no platform chosen)."""
    timeout = INSPECT_TIMEOUT if timeout is None else timeout
    argv = _base(timeout) + ["inspect", "--raw", *access.flags("--"), transport_ref]
    try:
        out = run(argv, timeout=timeout + RUN_SLACK).stdout
    except CommandError as e:
        raise explain(ref, e) from None
    try:
        return json.loads(out)
    except ValueError:
        raise BuildError(f"image {ref}: the manifest is not JSON") from None


def copy(ref: str, src: str, dest: str, *, access: Access = Access(),
         platform=(HOST_OS, HOST_ARCH), timeout: float = COMMAND_TIMEOUT) -> None:
    """skopeo copy src dest: progress on a terminal (skopeo prints it when stdout is one),
    quiet otherwise."""
    argv = _base(timeout) + ["copy", *access.flags("--src-"),
                             "--override-os", platform[0], "--override-arch", platform[1]]
    tty = sys.stderr.isatty()
    if not tty:
        argv.append("--quiet")
    argv += [src, dest]
    try:
        run(argv, timeout=timeout + RUN_SLACK, stdout=sys.stderr if tty else DEVNULL)
    except CommandError as e:
        raise explain(ref, e) from None


def transport_for(path: Path) -> str:
    """skopeo's transport for an image on disk: an OCI layout directory, an OCI archive,
    or a docker-archive (`docker save`) tarball; a clear error for anything else."""
    import tarfile
    if path.is_dir():
        if not (path / "oci-layout").is_file():
            raise BuildError(f"{path}: a directory but not an OCI image layout (no oci-layout file)")
        return f"oci:{os.fspath(path)}"
    if not path.is_file():
        raise BuildError(f"{path}: no such file or directory (expected an OCI layout directory, "
                         "an OCI archive or a docker-archive tarball)")
    try:
        with tarfile.open(path) as tar:
            names = {n.lstrip("./") for n in tar.getnames()}
    except (tarfile.TarError, OSError) as e:
        raise BuildError(f"{path}: not a tar archive ({e}); expected an OCI layout directory, "
                         "an OCI archive or a docker-archive tarball") from None
    if "oci-layout" in names:
        return f"oci-archive:{os.fspath(path)}"
    if "manifest.json" in names:
        return f"docker-archive:{os.fspath(path)}"
    raise BuildError(f"{path}: a tar archive with neither oci-layout (OCI archive) nor "
                     "manifest.json (docker-archive)")
