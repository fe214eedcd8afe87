"""`kindling image pull|import|list|inspect|rm`: the CLI of host_shim/images.py.

Kept apart from cli.py (which only registers these) so that module stays small.
Text by default, `--json` for scripts; skopeo shows layer progress only when the
terminal is one.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from image_build.log import human_size

from . import images


def _print(args, image, text: str) -> None:
    if args.json:
        print(json.dumps(images.describe(image), indent=2, sort_keys=True), flush=True)
    else:
        print(text, flush=True)


def _creds(given: str | None, ref: str) -> str | None:
    """--creds USER:PASS as given; --creds USER: the password from a prompt on a terminal,
    else the first line of stdin (so it need not be on any command line)."""
    if not given or ":" in given:
        return given
    if sys.stdin.isatty():
        password = getpass.getpass(f"Password for {given} ({ref}): ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    return f"{given}:{password}"


def cmd_pull(args: argparse.Namespace) -> int:
    image = images.pull(args.ref, insecure=args.insecure_registry, cert_dir=args.cert_dir,
                        creds=_creds(args.creds, args.ref), authfile=args.authfile,
                        platform=args.platform)
    _print(args, image, f"{image.ref} {image.digest}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    image = images.import_image(args.source, name=args.name, platform=args.platform)
    _print(args, image, f"{image.ref} {image.digest}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    found = images.list_images()
    if args.json:
        print(json.dumps([images.describe(i) for i in found], indent=2, sort_keys=True))
        return 0
    rows = [("REFERENCE", "DIGEST", "PLATFORM", "SIZE", "ROOTFS")] + [
        (i.ref, i.digest[:19], i.info.get("platform", "?"), human_size(i.info.get("size", 0)),
         human_size(i.info.get("rootfs_size", 0))) for i in found]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    image = images.inspect(args.ref)
    print(json.dumps(images.describe(image), indent=2, sort_keys=True))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    image = images.remove(args.ref)
    _print(args, image, image.ref)
    return 0


def add_commands(sub, command) -> None:
    """`image` and its subcommands; `command(sub, name, func, help, **kw)` is cli.py's."""
    image = sub.add_parser("image", help="OCI images: pull, import, list, inspect, rm")
    image_sub = image.add_subparsers(dest="image_command", metavar="COMMAND", required=True)
    pull = command(image_sub, "pull", cmd_pull, "pull an image from a registry (v2)",
                   description="Fetch REF into the image store (blobs already held are not "
                               "fetched again) and convert it to an erofs rootfs.")
    pull.add_argument("ref", metavar="REF", help="e.g. alpine:3.19, registry:5000/team/app:1")
    pull.add_argument("--insecure-registry", action="append", default=[], metavar="HOST",
                      help="reach HOST over plain http, unverified (repeatable)")
    pull.add_argument("--cert-dir", metavar="DIR", help="trust the CA certificates (*.crt) in "
                      "DIR for this registry (default: `cert_dirs` in registries.json)")
    pull.add_argument("--creds", metavar="USER[:PASS]", help="log in with these (handed to "
                      "skopeo in a 0600 temporary authfile, never on its command line); "
                      "USER alone: the password is asked for, or read from stdin's first line")
    pull.add_argument("--authfile", metavar="FILE", help="credentials from FILE "
                      "(containers-auth.json, as `skopeo login` writes; default: skopeo's own, "
                      "$REGISTRY_AUTH_FILE or ~/.config/containers/auth.json)")
    pull.add_argument("--platform", metavar="OS/ARCH", help="default: linux/amd64")
    imp = command(image_sub, "import", cmd_import, "import an OCI layout, OCI archive or "
                  "docker-archive", description="Copy an image from disk into the store.")
    imp.add_argument("source", metavar="FILE|DIR")
    imp.add_argument("--name", metavar="REF", help="the name to give it (default: the one "
                     "the archive gives, if exactly one)")
    imp.add_argument("--platform", metavar="OS/ARCH", help="default: linux/amd64")
    command(image_sub, "list", cmd_list, "list the images in the store", aliases=["ls"])
    ins = command(image_sub, "inspect", cmd_inspect, "an image's digest, config and layers (JSON)")
    ins.add_argument("ref", metavar="REF")
    rm = command(image_sub, "rm", cmd_rm, "remove an image (and blobs no other image uses)")
    rm.add_argument("ref", metavar="REF")
