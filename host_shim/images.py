"""OCI images on the host side: `kindling image ...`, `--image REF` on create and run,
and the image config's defaults under the user's options (docker's semantics).

The work is image_build/oci's; this module adds what belongs to the host: which
registries are insecure (`--insecure-registry HOST` and `insecure` in
$KINDLING_HOME/registries.json), BuildError as KindlingError (exit 125), and the
program an image runs:

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


def insecure_hosts(given=(), home: Path | None = None) -> set[str]:
    """The registries named insecure: `given` and registries.json's "insecure" list."""
    path = Path(home or kindling_home()) / REGISTRIES_FILE
    hosts = set(given)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return hosts
    except (OSError, ValueError) as e:
        die(f"{path}: cannot read it as JSON ({e})", hint='{"insecure": ["HOST:PORT", ...]}')
    listed = data.get("insecure", []) if isinstance(data, dict) else None
    if not isinstance(listed, list) or not all(isinstance(h, str) for h in listed):
        die(f"{path}: \"insecure\" must be a list of HOST[:PORT] strings")
    return hosts | set(listed)


def _insecure(ref: str, given=(), home: Path | None = None) -> bool:
    from image_build.oci import refs
    with build_errors():
        return refs.registry_of(refs.normalize(ref)) in insecure_hosts(given, home)


def pull(ref: str, *, insecure=(), platform: str | None = None, home: Path | None = None):
    from image_build.oci import images
    with build_errors():
        return images.pull(ref, cache_dir(), insecure=_insecure(ref, insecure, home),
                           platform_text=platform)


def ensure(ref: str, *, insecure=()):
    """The image, pulled when the store has none by that name (`--image`)."""
    from image_build.oci import images
    with build_errors():
        return images.ensure(ref, cache_dir(), insecure=_insecure(ref, insecure))


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
