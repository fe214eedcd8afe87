"""`kindling build`: build the kernel, initrd and rootfs into an output dir.

The host_shim CLI dispatches `kindling build` here through add_arguments(),
build_from_args() and print_built()/describe() (and turns a BuildError into its own
error); `python -m image_build` calls cli().
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from image_build import initrd, log, rootfs
from image_build.build import BASES, BuildOptions, build_all, check_base
from image_build.cache import default_cache_dir
from image_build.errors import BuildError

DEFAULT_OUT = Path("build")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rootfs", type=Path, metavar="DIR|TARBALL",
                        help="root filesystem source: a directory or a tarball such as a `docker export`"
                             " (default: a tiny busybox system)")
    add_base_argument(parser)
    parser.add_argument("--kernel", type=Path, metavar="VMLINUZ",
                        help="kernel image to boot (default: Debian's cloud kernel, fetched with apt-get)")
    parser.add_argument("--modules", type=Path, metavar="DIR",
                        help="the kernel's lib/modules/<release> directory (required with --kernel)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help=f"output directory (default: ./{DEFAULT_OUT})")
    parser.add_argument("--rootfs-format", choices=rootfs.FORMATS, default="erofs",
                        help="rootfs image format (default: erofs)")
    parser.add_argument("--compression", choices=initrd.COMPRESSIONS, default=initrd.DEFAULT_COMPRESSION,
                        help=f"initrd compression (default: {initrd.DEFAULT_COMPRESSION})")
    parser.add_argument("--cache-dir", type=Path, metavar="DIR",
                        help=f"build cache (default: $KINDLING_CACHE or {default_cache_dir()})")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache has the artifacts")
    parser.add_argument("--no-headers", dest="headers", action="store_false",
                        help="leave the kernel-headers tarball out of the initrd (the guest then"
                             " installs no /lib/modules/<release>/build)")


BASE_HELP = ("built-in rootfs instead of --rootfs: busybox (the default, a tiny busybox system)"
             " or debian (Debian 12 with systemd, bootstrapped with mmdebstrap and cached; its"
             " own command is /sbin/init)")


def add_base_argument(parser) -> None:
    """--base, for `kindling build` (`kindling create`/`run` take it from host_shim/options.py)."""
    parser.add_argument("--base", choices=BASES, default=None, help=BASE_HELP)


def build_from_args(args: argparse.Namespace):
    """Build what the arguments ask for; BuildError when it cannot be built."""
    opts = BuildOptions(
        out_dir=args.out,
        rootfs=args.rootfs,
        base=args.base or "busybox",
        kernel=args.kernel,
        modules=args.modules,
        rootfs_format=args.rootfs_format,
        compression=args.compression,
        cache_dir=args.cache_dir,
        force=getattr(args, "force", False),
        headers=getattr(args, "headers", True),
    )
    check_base(args.base, args.rootfs)
    return build_all(opts), opts


def describe(art, opts: BuildOptions) -> dict:
    """What was built, as `kindling build --json` prints it."""
    hd = art.info.get("headers")
    return {"kernel": str(art.kernel), "kernel_release": art.kernel_release,
            "kernel_size": art.kernel.stat().st_size,
            "initrd": str(art.initrd), "initrd_size": art.initrd.stat().st_size,
            "initrd_info": art.info.get("initrd", {}),
            "headers": dict(hd) if hd else None,
            "rootfs": str(art.rootfs), "rootfs_size": art.rootfs.stat().st_size,
            "rootfs_format": opts.rootfs_format}


def print_built(art, opts: BuildOptions) -> None:
    ii = art.info.get("initrd", {})
    print(f"kernel  {art.kernel}  ({log.human_size(art.kernel.stat().st_size)}, release {art.kernel_release})")
    extra = ""
    if ii.get("uncompressed_size"):
        extra = f", {log.human_size(ii['uncompressed_size'])} uncompressed, {ii.get('compression')}"
    print(f"initrd  {art.initrd}  ({log.human_size(art.initrd.stat().st_size)}{extra})")
    hd = art.info.get("headers")
    print(f"headers {hd['path_in_initrd']}  ({log.human_size(hd['size'])}, {hd['compression']})" if hd
          else "headers none")
    print(f"rootfs  {art.rootfs}  ({log.human_size(art.rootfs.stat().st_size)}, {opts.rootfs_format})")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kindling build", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return parser


def cli(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["build"]:
        argv = argv[1:]
    try:
        print_built(*build_from_args(make_parser().parse_args(argv)))
    except BuildError as e:
        print(f"kindling build: error: {e}", file=sys.stderr)
        return 1
    return 0
