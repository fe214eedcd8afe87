"""The `kindling` command: argument parsing and the one error boundary.

Every user-facing failure is a KindlingError raised somewhere below; `main`
is the only place that catches it, prints `kindling: error: ...` (plus a hint)
and returns a non-zero status.  Tracebacks appear only with --debug.
"""

import argparse
import sys
import traceback
from pathlib import Path

from . import accel, qemu, runner
from .errors import EXIT_KINDLING, KindlingError, die

PROG = "kindling"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _add_debug(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show tracebacks for errors")


# --- run ---------------------------------------------------------------------

def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    image = parser.add_argument_group("image")
    image.add_argument("--rootfs", type=Path, metavar="DIR|TARBALL",
                       help="root filesystem for the program (default: the builder's default)")
    image.add_argument("--kernel", type=Path, metavar="VMLINUZ",
                       help="guest kernel (default: Debian's cloud kernel)")
    image.add_argument("--modules", type=Path, metavar="DIR",
                       help="kernel modules for --kernel (a lib/modules/<release> tree)")
    vm = parser.add_argument_group("virtual machine")
    vm.add_argument("--memory", type=_positive_int, default=qemu.DEFAULT_MEMORY_MIB,
                    metavar="MiB", help="guest memory (default: %(default)s)")
    vm.add_argument("--cpus", type=_positive_int, default=qemu.DEFAULT_CPUS, metavar="N",
                    help="guest CPUs (default: %(default)s)")
    vm.add_argument("--accel", default=None, metavar="kvm|tcg|auto",
                    help=f"accelerator (default: ${accel.ENV_VAR} or auto: KVM if usable, "
                         "else TCG)")
    program = parser.add_argument_group("program")
    program.add_argument("--env", "-e", action="append", default=[], metavar="NAME=VALUE",
                         help="set an environment variable (repeatable)")
    program.add_argument("--workdir", "-w", metavar="DIR",
                         help="working directory in the guest (default: /)")
    run = parser.add_argument_group("run")
    run.add_argument("--timeout", type=_positive_float, default=runner.DEFAULT_TIMEOUT,
                     metavar="S", help="stop the VM after S seconds (default: %(default)g)")
    run.add_argument("--keep", action="store_true",
                     help="keep the instance directory (logs, disks) after the run")
    run.add_argument("--verbose", "-v", action="store_true",
                     help="show the kernel and boot messages on stderr")
    # Test hooks: feed the guest a raw (unvalidated) config.json, or a ready-made config disk.
    parser.add_argument("--config-json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--config-disk", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]",
                        help="the program to run in the VM, and its arguments")


def cmd_run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    opts = runner.RunOptions(
        command=tuple(command),
        rootfs=args.rootfs,
        kernel=args.kernel,
        modules=args.modules,
        memory_mib=args.memory,
        cpus=args.cpus,
        env=runner.parse_env(args.env),
        workdir=args.workdir,
        accel=accel.parse_accel(args.accel or accel.default_accel()).value,
        timeout=args.timeout,
        keep=args.keep,
        verbose=args.verbose,
        config_json=args.config_json,
        config_disk=args.config_disk,
    )
    return runner.run(opts)


# --- build -------------------------------------------------------------------

def _image_build_cli():
    """The image builder's CLI module (add_arguments, main_from_args), or None."""
    for name in ("image_build.cli", "image_build.__main__"):
        try:
            module = __import__(name, fromlist=["_"])
        except ImportError:
            continue
        if hasattr(module, "add_arguments") and hasattr(module, "main_from_args"):
            return module
    return None


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    builder = _image_build_cli()
    if builder is not None:
        builder.add_arguments(parser)
        parser.set_defaults(builder=builder)
    else:
        # TODO: goes away once image_build exposes add_arguments/main_from_args.
        parser.add_argument("build_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        parser.set_defaults(builder=None)


def cmd_build(args: argparse.Namespace) -> int:
    if args.builder is None:
        die("`kindling build` is not available: the image builder has no command-line "
            "entry point yet", hint="expected image_build.cli with add_arguments() and "
            "main_from_args()")
    from image_build.errors import BuildError
    try:
        return int(args.builder.main_from_args(args) or 0)
    except BuildError as e:
        die(f"build failed: {e}")


# --- main --------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Boot a microVM under QEMU, run one program in it, and report when "
                    "the guest is ready.")
    _add_debug(parser, default=False)
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run", help="run a program in a fresh microVM",
        description="Build what is missing (cached), boot a microVM, run CMD in it, show its "
                    "output and exit with its exit code.  Errors of kindling itself exit "
                    f"with {EXIT_KINDLING}.",
        usage=f"{PROG} run [OPTIONS] -- CMD [ARG...]")
    _add_debug(run, default=argparse.SUPPRESS)
    add_run_arguments(run)
    run.set_defaults(func=cmd_run)

    build = sub.add_parser("build", help="build the kernel, initrd and rootfs images",
                           description="Build (or reuse from the cache) the VM images.")
    _add_debug(build, default=argparse.SUPPRESS)
    add_build_arguments(build)
    build.set_defaults(func=cmd_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KindlingError as e:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"{PROG}: hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"{PROG}: error: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        print(f"{PROG}: hint: rerun with --debug for a traceback", file=sys.stderr)
        return EXIT_KINDLING


if __name__ == "__main__":
    sys.exit(main())
