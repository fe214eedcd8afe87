"""OCI images on the host side: `kindling image ...`, `--image REF` on create and run,
and the image config's defaults under the user's options (docker's semantics).

The work is image_build/oci's; this module adds what belongs to the host: how a
registry is reached (image_build/oci/access.py) -- insecure (`--insecure-registry
HOST`, or `insecure` in $KINDLING_HOME/registries.json), a CA directory to trust
(`--cert-dir DIR`, or `cert_dirs` {HOST: DIR} there), credentials (`--creds
USER:PASS` or `--authfile FILE`; else skopeo's own auth files) --, BuildError as
KindlingError (exit 125), and the program an image runs:

- no command, no --entrypoint: the image's Entrypoint + Cmd;
- a command: the image's Entrypoint + the command (it replaces Cmd);
- --entrypoint PROG: PROG + the command if given (the image's Cmd is dropped);
  `--entrypoint ""` clears the Entrypoint;
- Env: the image's, then --env over it; WorkingDir and User unless --workdir/--user.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import build_errors, die
from .instance import cache_dir, kindling_home

REGISTRIES_FILE = "registries.json"
REGISTRIES_HINT = '{"insecure": ["HOST:PORT", ...], "cert_dirs": {"HOST:PORT": "/path/to/ca-dir"}}'


def _registries(home: Path | None) -> tuple[Path, dict]:
    path = Path(home or kindling_home()) / REGISTRIES_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return path, {}
    except (OSError, ValueError) as e:
        die(f"{path}: cannot read it as JSON ({e})", hint=REGISTRIES_HINT)
    if not isinstance(data, dict):
        die(f"{path}: expected a JSON object", hint=REGISTRIES_HINT)
    return path, data


def insecure_hosts(given=(), home: Path | None = None) -> set[str]:
    """The registries named insecure: `given` and registries.json's "insecure" list."""
    path, data = _registries(home)
    listed = data.get("insecure", [])
    if not isinstance(listed, list) or not all(isinstance(h, str) for h in listed):
        die(f"{path}: \"insecure\" must be a list of HOST[:PORT] strings", hint=REGISTRIES_HINT)
    return set(given) | set(listed)


def cert_dirs(home: Path | None = None) -> dict[str, str]:
    """registries.json's "cert_dirs": {HOST[:PORT]: DIR of CA *.crt files}."""
    path, data = _registries(home)
    dirs = data.get("cert_dirs", {})
    if not isinstance(dirs, dict) or not all(isinstance(v, str) for v in dirs.values()):
        die(f"{path}: \"cert_dirs\" must map HOST[:PORT] to a directory", hint=REGISTRIES_HINT)
    return dirs


def access(ref: str, *, insecure=(), cert_dir=None, creds: str | None = None, authfile=None,
           home: Path | None = None):
    """How to reach `ref`'s registry: the options given, then registries.json."""
    from image_build.oci import refs
    from image_build.oci.access import Access
    with build_errors():
        registry = refs.registry_of(refs.normalize(ref))
    cert_dir = cert_dir or cert_dirs(home).get(registry)
    return Access(insecure=registry in insecure_hosts(insecure, home),
                  cert_dir=Path(cert_dir) if cert_dir else None,
                  authfile=Path(authfile) if authfile else None, creds=creds)


def pull(ref: str, *, insecure=(), cert_dir=None, creds: str | None = None, authfile=None,
         platform: str | None = None, home: Path | None = None):
    from image_build.oci import images
    reach = access(ref, insecure=insecure, cert_dir=cert_dir, creds=creds, authfile=authfile,
                   home=home)
    with build_errors():
        return images.pull(ref, cache_dir(), access=reach, platform_text=platform)


def ensure(ref: str, *, insecure=()):
    """The image, pulled when the store has none by that name (`--image`)."""
    from image_build.oci import images
    with build_errors():
        return images.ensure(ref, cache_dir(), access=access(ref, insecure=insecure))


def import_image(path, *, name: str | None = None, platform: str | None = None):
    from image_build.oci import images
    with build_errors():
        return images.import_image(Path(path), cache_dir(), name=name, platform_text=platform)


def list_images() -> list:
    from image_build.oci import images
    with build_errors():
        return images.list_images(cache_dir())


def inspect(ref: str):
    from image_build.oci import images
    with build_errors():
        return images.lookup(ref, cache_dir())


def remove(ref: str):
    from image_build.oci import images
    with build_errors():
        return images.remove(ref, cache_dir())


def describe(image) -> dict:
    """An image as `image list/inspect --json` and the API show it."""
    return {"ref": image.ref, "rootfs": str(image.rootfs), **image.info}


# --- the program an image runs ---------------------------------------------------------------

def image_command(opts) -> list[str] | None:
    """The image's own command (Entrypoint + Cmd), None without --image."""
    if opts.image is None:
        return None
    config = ensure(opts.image, insecure=opts.insecure_registries).config
    return list(config.get("Entrypoint") or []) + list(config.get("Cmd") or [])


def command(opts) -> tuple[str, ...]:
    """The program, with docker's semantics (see the module docstring)."""
    config = ensure(opts.image, insecure=opts.insecure_registries).config if opts.image else {}
    entry = list(config.get("Entrypoint") or [])
    cmd = list(config.get("Cmd") or [])
    if opts.entrypoint is not None:
        entry, cmd = ([opts.entrypoint] if opts.entrypoint else []), []
    if opts.command:
        cmd = list(opts.command)
    return tuple(entry + cmd)


def program_defaults(opts) -> dict:
    """config.json's env, workdir and user: the image's, under the user's options."""
    config = ensure(opts.image, insecure=opts.insecure_registries).config if opts.image else {}
    env = dict(item.partition("=")[::2] for item in config.get("Env") or [])
    env.update(dict(opts.env))
    defaults = {"env": env, "workdir": opts.workdir or config.get("WorkingDir") or "/"}
    user = opts.user or config.get("User")
    if user:
        defaults["user"] = user
    return defaults
