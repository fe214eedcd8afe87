"""The settings table: every option of `kindling create` and `kindling run`, defined once.

Each `Option` says its name (the field of CreateOptions/RunOptions and the Python API's
keyword), its CLI flags, default, help, how a value is checked and converted, and where
it goes (`goes_to`: config.json, the QEMU command line, the image builder, the run
supervisor; every option is also kept in metadata.json under "options").  From the table:

- `add_arguments(parser, command)`: the argparse arguments of create and run;
- `CreateOptions`, `RunOptions`: frozen dataclasses with one field per option;
- `make(cls, values, home)` / `from_args(cls, args, home)`: checked, converted options
  (the one validation path of the CLI and the API; errors name the CLI flag);
- `signature(command)`: the keyword arguments of the API's `Kindling.create` (and run);
- `to_json(opts)`: the options as metadata.json keeps them.

The same converter takes the CLI's text and the API's Python values (`memory="1G"` or
`memory=1024`, `env={"A": "1"}` or `["A=1"]`), and leaves a converted value unchanged,
so `checked` can re-check options built directly (tests, benchmarks).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image_build.cli import BASE_HELP

from . import accel as accel_mod
from . import initmode, logfiles, qemu, sizes
from . import volumes as volumes_mod
from .errors import die
from .volumes import VolumeSpec

AGENT_TRANSPORTS = ("serial", "vsock", "none")
DEFAULT_OVERLAY_SIZE = 256 << 20
MIN_MEMORY_MIB = 64
DEFAULT_RUN_TIMEOUT = 120.0
DEFAULT_BOOT_TIMEOUT = 300.0   # run's --boot-timeout and wait --for running's default deadline
DEFAULT_EARLY_BOOT_TIMEOUT = 30.0   # the early-boot watchdog's bound (host_shim/watchdog.py: why)
GROUPS = ("image", "virtual machine", "program", "network and volumes", "serial log", "run")
DESTINATIONS = ("config", "qemu", "build", "run", "metadata")


@dataclass(frozen=True)
class Option:
    name: str                       # dataclass field, API keyword, argparse dest
    type: Any                       # the converted value's type
    default: Any
    help: str
    flags: tuple[str, ...] = ()     # () for the positional command
    metavar: str | None = None
    group: str | None = None        # the --help section (None: at the top)
    action: str = "store"           # store | append | true | false | command
    convert: Callable[[Any, "Option", Path | None], Any] = lambda value, opt, home: value
    goes_to: tuple[str, ...] = ()   # where the value is used (DESTINATIONS)
    hidden: bool = False            # a test hook: not in --help
    run_only: bool = False          # `kindling run` only (not create)

    @property
    def flag(self) -> str:
        """How errors name the option: its first CLI flag."""
        return self.flags[0] if self.flags else "the command"


# --- converters: (value, option, home) -> the field's value; KindlingError names the flag -----

def _text(value, opt: Option, home) -> str | None:
    if value is not None and not isinstance(value, str):
        die(f"{opt.flag} {value!r}: expected text")
    return value


def _path(value, opt: Option, home) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        die(f"{opt.flag} {value!r}: expected a path")
    return Path(value)


def _bool(value, opt: Option, home) -> bool:
    if not isinstance(value, bool):
        die(f"{opt.flag} {value!r}: expected true or false")
    return value


def _choice(*choices: str):
    def convert(value, opt: Option, home) -> str:
        if value not in choices:
            die(f"{opt.flag} {value!r}: expected one of {', '.join(choices)}")
        return value
    return convert


def _base(value, opt: Option, home) -> str | None:
    from image_build.build import BASES
    return None if value is None else _choice(*BASES)(value, opt, home)


def _count(value, opt: Option, home) -> int:
    try:
        number = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or str(number) != str(value).strip():
        die(f"{opt.flag} {value!r}: expected a whole number")
    if number < 1:
        die(f"{opt.flag} {value}: at least 1 is needed")
    return number


def _seconds(value, opt: Option, home) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        die(f"{opt.flag} {value!r}: expected a number of seconds")
    if not seconds > 0:
        die(f"{opt.flag} {value}: must be positive")
    return seconds


def _seconds_or_off(value, opt: Option, home) -> float:
    """Seconds, or 0 for off."""
    try:
        if float(value) == 0:
            return 0.0
        if float(value) < 0:
            die(f"{opt.flag} {value}: must be positive, or 0 (off)")
    except (TypeError, ValueError):
        pass        # _seconds names what is expected
    return _seconds(value, opt, home)


def _memory(value, opt: Option, home) -> int:
    """MiB: `512`, `512M`, `1G`."""
    nbytes = sizes.parse_size(value, opt.flag, bare=sizes.MIB)
    if nbytes % sizes.MIB:
        die(f"{opt.flag} {value}: must be a whole number of MiB")
    if nbytes < MIN_MEMORY_MIB * sizes.MIB:
        die(f"{opt.flag} {value}: at least {MIN_MEMORY_MIB}M is needed")
    return nbytes // sizes.MIB


def _bytes(minimum: int):
    def convert(value, opt: Option, home) -> int:
        nbytes = sizes.parse_size(value, opt.flag)
        if nbytes < minimum:
            die(f"{opt.flag} {value}: at least {minimum} bytes ({sizes.human(minimum)})")
        return nbytes
    return convert


def _accel(value, opt: Option, home) -> str:
    return accel_mod.parse_accel(value or accel_mod.default_accel()).value


def _command(value, opt: Option, home) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(a, str) for a in value):
        die(f"the command {value!r}: expected a list of strings (argv)")
    command = list(value)
    if command[:1] == ["--"]:
        command = command[1:]
    return tuple(command)


def _env(value, opt: Option, home) -> tuple[tuple[str, str], ...]:
    items = value.items() if isinstance(value, dict) else value
    pairs = []
    for item in items:
        key, sep, text = item.partition("=") if isinstance(item, str) else (item[0], "=", item[1])
        if not sep or not key:
            die(f"invalid {opt.flag} {item!r}", hint=f"use {opt.flag} NAME=VALUE")
        pairs.append((key, text))
    return tuple(pairs)


def parse_env(items) -> tuple[tuple[str, str], ...]:
    """--env NAME=VALUE items (or a dict, or pairs) as pairs; `kindling exec --env` too."""
    return _env(items, BY_NAME["env"], None)


def _volumes(value, opt: Option, home) -> tuple[VolumeSpec, ...]:
    from .instance import kindling_home
    return tuple(v if isinstance(v, VolumeSpec) else volumes_mod.parse_spec(home or kindling_home(), v)
                 for v in value)


def _strings(value, opt: Option, home) -> tuple[str, ...]:
    return tuple(_text(v, opt, home) for v in value)


# --- the table ---------------------------------------------------------------------------

OPTIONS: tuple[Option, ...] = (
    Option("command", tuple[str, ...], (), "the program to run in the VM, and its arguments "
           "(optional when the image has its own command, as --base debian has)",
           metavar="-- CMD [ARG...]", action="command", convert=_command, goes_to=("config",)),
    Option("name", str | None, None, "a name for the instance (default: its id)",
           ("--name",), "NAME", convert=_text, goes_to=("metadata",)),
    Option("rootfs", Path | None, None, "root filesystem for the program: a directory or a "
           "tarball (default: the builder's busybox system)", ("--rootfs",), "DIR|TARBALL",
           "image", convert=_path, goes_to=("build",)),
    Option("image", str | None, None, "an OCI image to run: its rootfs, and its Entrypoint, "
           "Cmd, Env, WorkingDir and User as defaults (pulled when missing, like docker run; "
           "see `kindling image`)", ("--image",), "REF", "image", convert=_text,
           goes_to=("build", "config")),
    Option("insecure_registries", tuple[str, ...], (), "a registry HOST[:PORT] that --image "
           "may reach over plain http, unverified (repeatable; also `insecure` in "
           "$KINDLING_HOME/registries.json)", ("--insecure-registry",), "HOST", "image",
           "append", convert=_strings, goes_to=("build",)),
    Option("template", str | None, None, "start from template NAME (`kindling template "
           "create`): restored at its checkpoint with this instance's own disks, config and "
           "network, instead of a cold boot; its image and VM options are the template's",
           ("--template",), "NAME", "image", convert=_text, goes_to=("build", "qemu", "metadata")),
    Option("base", str | None, None, BASE_HELP, ("--base",), "busybox|debian", "image",
           convert=_base, goes_to=("build", "config")),
    Option("kernel", Path | None, None, "guest kernel (default: Debian's cloud kernel)",
           ("--kernel",), "VMLINUZ", "image", convert=_path, goes_to=("build",)),
    Option("modules", Path | None, None, "kernel modules for --kernel (a lib/modules/<release> "
           "tree)", ("--modules",), "DIR", "image", convert=_path, goes_to=("build",)),
    Option("initrd", Path | None, None, "boot this initrd instead of the built one (the kernel "
           "and the rootfs still come from the builder)", ("--initrd",), "FILE", "image",
           convert=_path, goes_to=("build", "qemu")),
    Option("headers", bool, True, "no kernel headers: leave them out of the initrd and set "
           "skip_kernel_headers (default: the guest installs them in the background, "
           "/lib/modules/$(uname -r)/build)", ("--no-headers",), group="image",
           action="false", convert=_bool, goes_to=("build", "config")),
    Option("memory", int, qemu.DEFAULT_MEMORY_MIB, "guest memory: 512M, 1G; a bare number is "
           f"MiB, as QEMU's -m (default: {qemu.DEFAULT_MEMORY_MIB}M, at least "
           f"{MIN_MEMORY_MIB}M)", ("--memory", "-m"), "SIZE", "virtual machine",
           convert=_memory, goes_to=("qemu",)),
    Option("cpus", int, qemu.DEFAULT_CPUS, f"guest CPUs (default: {qemu.DEFAULT_CPUS})",
           ("--cpus",), "N", "virtual machine", convert=_count, goes_to=("qemu",)),
    Option("accel", str | None, None, f"accelerator (default: "
           f"${accel_mod.ENV_VAR} or auto: KVM if usable, else TCG)", ("--accel",),
           "kvm|tcg|auto", "virtual machine", convert=_accel, goes_to=("qemu", "metadata")),
    Option("agent", str, "serial", "the in-VM agent's transport: serial (virtio-serial, "
           "default), vsock (needs vhost-vsock), or none (no agent: Running needs only the "
           "program)", ("--agent",), "serial|vsock|none", "virtual machine",
           convert=_choice(*AGENT_TRANSPORTS), goes_to=("qemu", "config")),
    Option("qga", bool, False, "also a virtio-serial port for QEMU's guest agent "
           "(org.qemu.guest_agent.0, host end qga.sock in the instance directory); udev "
           "starts qemu-ga in a systemd-mode Debian guest, in exec mode start it yourself",
           ("--qga",), group="virtual machine", action="true", convert=_bool,
           goes_to=("qemu",)),
    Option("grpc", bool, False, "also a virtio-serial port for the agent's gRPC front end "
           "(hypeman's GuestService; org.kindling.grpc.0, host end grpc.sock in the instance "
           "directory), for hosts without vsock", ("--grpc",), group="virtual machine",
           action="true", convert=_bool, goes_to=("qemu",)),
    Option("early_boot_timeout", float, DEFAULT_EARLY_BOOT_TIMEOUT, "the early-boot "
           "watchdog: a guest that prints no boot stage line within S seconds of its start "
           "is ended and launched again with the same disks (at most twice; recorded, and "
           "shown by `inspect`), by `run` and by `wait`; 0: off (default: "
           f"{DEFAULT_EARLY_BOOT_TIMEOUT:g})", ("--early-boot-timeout",), "S",
           "virtual machine", convert=_seconds_or_off, goes_to=("metadata",)),
    Option("env", tuple[tuple[str, str], ...], (), "set an environment variable "
           "(repeatable)", ("--env", "-e"), "NAME=VALUE", "program", "append",
           convert=_env, goes_to=("config",)),
    Option("workdir", str | None, None, "working directory in the guest (default: /)",
           ("--workdir", "-w"), "DIR", "program", convert=_text, goes_to=("config",)),
    Option("entrypoint", str | None, None, "the program to run instead of the image's "
           "Entrypoint; the image's Cmd is dropped too, the command given is its arguments "
           "(docker's --entrypoint)", ("--entrypoint",), "PROG", "program", convert=_text,
           goes_to=("config",)),
    Option("user", str | None, None, "run the program as USER[:GROUP] (names from the "
           "image's /etc/passwd and /etc/group, or numbers; default: the image's User, "
           "else root)", ("--user", "-u"), "USER[:GROUP]", "program", convert=_text,
           goes_to=("config",)),
    Option("init_mode", str, "auto", "exec: PID 1 runs CMD as the program; systemd: CMD is an "
           "init that PID 1 hands the machine to; auto (default): systemd when CMD -- or "
           "without one, the image's own command -- is "
           f"{', '.join(initmode.SYSTEMD_INITS)}, else exec", ("--init-mode",),
           "auto|exec|systemd", "program", convert=_choice(*initmode.INIT_MODES),
           goes_to=("config",)),
    Option("net", bool, False, "give the guest eth0 in a private network namespace "
           "(kindling-<id>; guest 10.200.0.2/24, gateway 10.200.0.1)", ("--net",),
           group="network and volumes", action="true", convert=_bool,
           goes_to=("qemu", "config")),
    Option("volumes", tuple[VolumeSpec, ...], (), "attach an ext4 volume (a name from "
           "`kindling volume create` or an image path) at /path; repeatable",
           ("--volume",), "IMAGE:/path[:ro|rw|overlay]", "network and volumes", "append",
           convert=_volumes, goes_to=("qemu", "config")),
    Option("log_max_size", int, logfiles.DEFAULT_MAX_BYTES, "rotate logs/app.log at this "
           "size: 512K, 4M; a bare number is bytes (default: "
           f"{sizes.human(logfiles.DEFAULT_MAX_BYTES)})", ("--log-max-size",), "SIZE",
           "serial log", convert=_bytes(logfiles.MIN_MAX_BYTES), goes_to=("metadata",)),
    Option("log_files", int, logfiles.DEFAULT_KEEP, "rotated copies to keep (default: "
           f"{logfiles.DEFAULT_KEEP})", ("--log-files",), "N", "serial log",
           convert=_count, goes_to=("metadata",)),
    # Test hooks: extra kernel arguments, a raw (unvalidated) config.json, a ready-made
    # config disk, the overlay disk's size, kernel arguments of the first launch only.
    Option("kernel_args", tuple[str, ...], (), "extra kernel command line arguments",
           ("--kernel-arg",), action="append", convert=_strings, goes_to=("qemu",),
           hidden=True),
    Option("config_json", Path | None, None, "a raw config.json, not validated",
           ("--config-json",), convert=_path, goes_to=("config",), hidden=True),
    Option("config_disk", Path | None, None, "a ready-made config disk image",
           ("--config-disk",), convert=_path, goes_to=("qemu",), hidden=True),
    Option("overlay_size", int, DEFAULT_OVERLAY_SIZE, "the overlay disk's size",
           ("--overlay-size",), "SIZE", convert=_bytes(sizes.MIB), goes_to=("qemu",),
           hidden=True),
    Option("first_launch_kernel_args", tuple[str, ...], (), "extra kernel arguments for the "
           "first launch only, not a relaunch (tests/test_vm_watchdog.py)",
           ("--first-launch-kernel-arg",), action="append", convert=_strings,
           goes_to=("qemu",), hidden=True),
    Option("timeout", float, DEFAULT_RUN_TIMEOUT, "stop the VM after S seconds "
           f"(default: {DEFAULT_RUN_TIMEOUT:g})", ("--timeout",), "S", "run",
           convert=_seconds, goes_to=("run",), run_only=True),
    Option("boot_timeout", float, DEFAULT_BOOT_TIMEOUT, "the boot deadline: stop the VM "
           "(exit 125, naming the last boot stage and marker seen) if the program has not "
           "started -- in systemd mode: the guest is not Running -- within S seconds "
           f"(default: {DEFAULT_BOOT_TIMEOUT:g})", ("--boot-timeout",), "S", "run",
           convert=_seconds, goes_to=("run",), run_only=True),
    Option("keep", bool, False, "keep the instance (logs, disks) after the run",
           ("--keep",), group="run", action="true", convert=_bool, goes_to=("run",),
           run_only=True),
    Option("verbose", bool, False, "show the kernel and boot messages on stderr",
           ("--verbose", "-v"), group="run", action="true", convert=_bool,
           goes_to=("run",), run_only=True),
)
BY_NAME = {o.name: o for o in OPTIONS}


def for_command(command: str) -> tuple[Option, ...]:
    """The options of `create` or `run`."""
    return tuple(o for o in OPTIONS if command == "run" or not o.run_only)


# --- the dataclasses ---------------------------------------------------------------------

def _dataclass(name: str, command: str, doc: str):
    fields = [(o.name, o.type, dataclasses.field(default=o.default)) for o in for_command(command)]
    cls = dataclasses.make_dataclass(name, fields, frozen=True,
                                     namespace={"verb": command, "__doc__": doc,
                                                "__module__": __name__})
    return cls


CreateOptions = _dataclass("CreateOptions", "create", "Everything `kindling create` takes "
                           "(host_shim/options.py's table).")
RunOptions = _dataclass("RunOptions", "run", "Everything `kindling run` takes: create's "
                        "options and the run's own.")


# --- the CLI -------------------------------------------------------------------------------

def _add_one(parser, opt: Option) -> None:
    if opt.action == "command":
        parser.add_argument(opt.name, nargs=argparse.REMAINDER, metavar=opt.metavar, help=opt.help)
        return
    kwargs: dict[str, Any] = {"dest": opt.name,
                              "help": argparse.SUPPRESS if opt.hidden else opt.help}
    if opt.action == "true":
        kwargs.update(action="store_true", default=False)
    elif opt.action == "false":
        kwargs.update(action="store_false", default=True)
    elif opt.action == "append":
        kwargs.update(action="append", default=[], metavar=opt.metavar)
    else:
        kwargs.update(default=opt.default, metavar=opt.metavar)
    parser.add_argument(*opt.flags, **kwargs)


def add_arguments(parser: argparse.ArgumentParser, command: str, only_groups=None) -> None:
    """The arguments of `kindling create` or `kindling run`, in --help's sections.
    Values are taken as text here and checked by `from_args` (errors exit 125).
    `only_groups`: just the options of those sections (`template create`: image, VM)."""
    chosen = [o for o in for_command(command) if only_groups is None or o.group in only_groups]
    groups = {name: parser.add_argument_group(name) for name in GROUPS
              if any(o.group == name for o in chosen)}
    for opt in chosen:
        _add_one(groups[opt.group] if opt.group else parser, opt)


def from_args(cls, args: argparse.Namespace, home: Path | None):
    """CreateOptions/RunOptions from parsed arguments (the fields of `cls` only)."""
    return make(cls, {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}, home)


# --- checking and converting -----------------------------------------------------------------

def make(cls, values: dict, home: Path | None):
    """`cls` (CreateOptions or RunOptions) from CLI text or API values, each converted and
    checked by its option's converter; an unknown name is an error naming it."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        die(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}",
            hint=f"the options of {cls.verb} are: {', '.join(sorted(known))}")
    return checked(cls(**values), home)


def checked(opts, home: Path | None = None):
    """`opts` with every value converted and checked, however it was built (tests and
    benchmarks construct CreateOptions directly; converted values pass unchanged)."""
    converted = {}
    for f in dataclasses.fields(opts):
        opt = BY_NAME[f.name]
        converted[f.name] = opt.convert(getattr(opts, f.name), opt, home)
    return dataclasses.replace(opts, **converted)


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, VolumeSpec):
        return {"image": str(value.image), "path": value.path, "mode": value.mode}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def to_json(opts) -> dict:
    """The options as metadata.json keeps them (paths as text, volumes as objects)."""
    return {f.name: _jsonable(getattr(opts, f.name)) for f in dataclasses.fields(opts)}


# --- the Python API ---------------------------------------------------------------------------

def signature(command: str, *, first=()) -> inspect.Signature:
    """The signature of the API's create (or run): `command` positional, the rest keywords."""
    params = list(first)
    for opt in for_command(command):
        kind = (inspect.Parameter.POSITIONAL_OR_KEYWORD if opt.action == "command"
                else inspect.Parameter.KEYWORD_ONLY)
        params.append(inspect.Parameter(opt.name, kind, default=opt.default, annotation=opt.type))
    return inspect.Signature(params)


def api_doc(command: str) -> str:
    """One line per keyword, from the table's help."""
    return "\n".join(f"    {o.name} ({' '.join(o.flags) or 'positional'}): {o.help}"
                     for o in for_command(command) if not o.hidden)
