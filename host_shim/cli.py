"""The `kindling` command: argument parsing, output, and the one error boundary.

A thin layer over host_shim/lifecycle.py (and runner.py for `run`).  Every
user-facing failure is a KindlingError raised somewhere below; `main` is the
only place that catches it, prints `kindling: error: ...` (plus a hint) and
exits non-zero: 125 for `run` and `build` (like `docker run`, so the program's
own codes stay apart), 1 for the other commands.  Tracebacks only with --debug.
"""

import argparse
import json
import os
import sys
import time
import traceback
from functools import partial
from pathlib import Path

import trio

from initsys import protocol

from . import accel, agent_ops, chart, initmode, lifecycle, logfiles, metadata, prepare, qemu, runner, volumes
from .api import InstanceInfo
from .errors import EXIT_ERROR, EXIT_KINDLING, KindlingError, die, kindling_error_in
from .instance import kindling_home
from .state import State
from .timeline import format_timeline

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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _size(text: str) -> int:
    """A byte count for argparse: 1048576, 512K, 4M, 1G (volumes.parse_size)."""
    try:
        return volumes.parse_size(text)
    except KindlingError as e:
        raise argparse.ArgumentTypeError(e.message) from None


def _add_common(parser: argparse.ArgumentParser, *, json_output: bool = True) -> None:
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks for errors")
    if json_output:
        parser.add_argument("--json", action="store_true", help="print JSON")


def _home() -> Path:
    return kindling_home()


def _resolve(ref: str):
    return metadata.resolve(_home(), ref)[0]


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True), flush=True)


def _summary(info: InstanceInfo) -> dict:
    return {"id": info.id, "name": info.name, "state": str(info.state)}


# --- create / run options ----------------------------------------------------------

def add_create_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", metavar="NAME", help="a name for the instance (default: its id)")
    image = parser.add_argument_group("image")
    image.add_argument("--rootfs", type=Path, metavar="DIR|TARBALL",
                       help="root filesystem for the program (default: the builder's default)")
    from image_build import cli as builder
    builder.add_base_argument(image)
    image.add_argument("--kernel", type=Path, metavar="VMLINUZ",
                       help="guest kernel (default: Debian's cloud kernel)")
    image.add_argument("--modules", type=Path, metavar="DIR",
                       help="kernel modules for --kernel (a lib/modules/<release> tree)")
    image.add_argument("--initrd", type=Path, metavar="FILE",
                       help="boot this initrd instead of the built one (the kernel and the "
                            "rootfs still come from the builder)")
    image.add_argument("--no-headers", dest="headers", action="store_false",
                       help="no kernel headers: leave them out of the initrd and set "
                            "skip_kernel_headers (default: the guest installs them in the "
                            "background, /lib/modules/$(uname -r)/build)")
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
    program.add_argument("--init-mode", choices=initmode.INIT_MODES, default="auto",
                         help="exec: PID 1 runs CMD as the program; systemd: CMD is an init that "
                              "PID 1 hands the machine to; auto (default): systemd when CMD -- or "
                              "without one, the image's own command -- is "
                              f"{', '.join(initmode.SYSTEMD_INITS)}, else exec")
    vm.add_argument("--agent", default="serial", choices=prepare.AGENT_TRANSPORTS,
                    help="the in-VM agent's transport: serial (virtio-serial, default), vsock "
                         "(needs vhost-vsock), or none (no agent: Running needs only the program)")
    vm.add_argument("--qga", action="store_true",
                    help="also a virtio-serial port for QEMU's guest agent (org.qemu.guest_agent.0, "
                         "host end qga.sock in the instance directory); udev starts qemu-ga in a "
                         "systemd-mode Debian guest, in exec mode start it yourself")
    parser.add_argument("--kernel-arg", action="append", default=[], help=argparse.SUPPRESS)
    devices = parser.add_argument_group("network and volumes")
    devices.add_argument("--net", action="store_true",
                         help="give the guest eth0 in a private network namespace "
                              "(kindling-<id>; guest 10.200.0.2/24, gateway 10.200.0.1)")
    devices.add_argument("--volume", action="append", default=[], metavar="IMAGE:/path[:ro|rw|overlay]",
                         help="attach an ext4 volume (a name from `kindling volume create` or "
                              "an image path) at /path; repeatable")
    logs = parser.add_argument_group("serial log")
    logs.add_argument("--log-max-size", type=_size, default=logfiles.DEFAULT_MAX_BYTES,
                      metavar="SIZE", help="rotate logs/app.log at this size, e.g. 512K, 4M "
                                           "(default: 4M)")
    logs.add_argument("--log-files", type=_positive_int, default=logfiles.DEFAULT_KEEP,
                      metavar="N", help="rotated copies to keep (default: %(default)s)")
    # Test hooks: feed the guest a raw (unvalidated) config.json, or a ready-made config disk.
    parser.add_argument("--config-json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--config-disk", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]",
                        help="the program to run in the VM, and its arguments (optional when "
                             "the image has its own command, as --base debian has)")


def _create_fields(args: argparse.Namespace) -> dict:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    return dict(
        command=tuple(command), name=args.name, rootfs=args.rootfs, base=args.base,
        init_mode=args.init_mode, kernel=args.kernel,
        modules=args.modules, memory_mib=args.memory, cpus=args.cpus,
        env=prepare.parse_env(args.env), workdir=args.workdir,
        accel=accel.parse_accel(args.accel or accel.default_accel()).value,
        config_json=args.config_json, config_disk=args.config_disk,
        log_max_bytes=args.log_max_size, log_keep=args.log_files,
        net=args.net, volumes=tuple(volumes.parse_spec(_home(), v) for v in args.volume),
        agent=args.agent, qga=args.qga, kernel_args=tuple(args.kernel_arg), headers=args.headers,
        initrd=args.initrd,
    )


# --- run -----------------------------------------------------------------------------

def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    add_create_arguments(parser)
    run = parser.add_argument_group("run")
    run.add_argument("--timeout", type=_positive_float, default=runner.DEFAULT_TIMEOUT,
                     metavar="S", help="stop the VM after S seconds (default: %(default)g)")
    run.add_argument("--keep", action="store_true",
                     help="keep the instance (logs, disks) after the run")
    run.add_argument("--verbose", "-v", action="store_true",
                     help="show the kernel and boot messages on stderr")


def cmd_run(args: argparse.Namespace) -> int:
    opts = runner.RunOptions(**_create_fields(args), timeout=args.timeout, keep=args.keep,
                             verbose=args.verbose)
    return runner.run(opts)


# --- instances -------------------------------------------------------------------------

def cmd_create(args: argparse.Namespace) -> int:
    opts = prepare.CreateOptions(**_create_fields(args))
    instance, meta = trio.run(partial(lifecycle.create, opts, _home()))
    info = InstanceInfo.of(instance, meta)
    if args.json:
        _print_json(info.to_json())
    else:
        print(info.id)
    return 0


def _simple(operation):
    """start/stop/delete: print the name (docker style), or the instance as JSON."""
    def command(args: argparse.Namespace) -> int:
        instance = _resolve(args.vm)
        meta = trio.run(operation(args), instance)
        info = InstanceInfo.of(instance, meta)
        if args.json:
            _print_json(_summary(info) | {"vmm_exit": info.vmm_exit})
        else:
            print(args.vm)
        return 0
    return command


cmd_start = _simple(lambda args: lifecycle.start)
cmd_stop = _simple(lambda args: partial(lifecycle.stop, timeout=args.time))
cmd_delete = _simple(lambda args: lifecycle.delete)


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def cmd_list(args: argparse.Namespace) -> int:
    infos = [InstanceInfo.of(i, m) for i, m in trio.run(lifecycle.list_instances, _home())]
    if args.json:
        _print_json([_summary(i) | {"created_at": protocol.format_ts(int(i.created_at * 1e9)),
                                    "time_to_running": i.time_to_running,
                                    "command": list(i.command), "error": i.error}
                     for i in infos])
        return 0
    rows = [("ID", "NAME", "STATE", "TO RUNNING", "CREATED", "COMMAND")]
    now = time.time()
    for i in infos:
        ttr = f"{i.time_to_running:.2f}s" if i.time_to_running is not None else "-"
        rows.append((i.id, i.name, str(i.state), ttr, _ago(now - i.created_at),
                     " ".join(i.command)[:40] or "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    instance = _resolve(args.vm)
    info = InstanceInfo.of(instance, trio.run(lifecycle.observe, instance))
    if args.json:
        _print_json(info.to_json())
        return 0
    lines = [("id", info.id), ("name", info.name), ("state", str(info.state))]
    if info.error:
        lines.append(("error", info.error))
    lines += [("created", protocol.format_ts(int(info.created_at * 1e9))), ("boot", str(info.boot)),
              ("pid", str(info.pid) if info.pid else "-"),
              ("command", " ".join(info.command) or "-"),
              ("init mode", info.init_mode or "-"),
              ("time to Running", f"{info.time_to_running:.3f} s"
               if info.time_to_running is not None else "-")]
    for kind, m in info.markers.items():
        lines.append((kind, f"ts={m['ts']} seen={m['seen_at']}" if m["ts"] else
                      " ".join(f"{k}={protocol.go_quote(v)}" for k, v in m["fields"].items())))
    if info.vmm_exit:
        lines.append(("VMM exit", info.vmm_exit))
    lines.append(("directory", str(info.dir)))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key + ':':<{width + 1}} {value}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    instance = _resolve(args.vm)
    if args.json:
        def write(line: str) -> None:
            print(json.dumps({"source": args.source, "line": line}), flush=args.follow)
    else:
        def write(line: str) -> None:
            print(line, flush=args.follow)
    trio.run(partial(lifecycle.logs, instance, write, source=args.source, follow=args.follow))
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    instance = _resolve(args.vm)
    target = State.RUNNING if args.target == "running" else State.STOPPED
    meta = trio.run(partial(lifecycle.wait, instance, target, timeout=args.timeout))
    info = InstanceInfo.of(instance, meta)
    if args.json:
        _print_json(_summary(info) | {"time_to_running": info.time_to_running,
                                      "exit": info.exit})
        return 0
    if target is State.RUNNING and info.state is not State.RUNNING:
        print(f"{PROG}: note: {info.name} was Running, and is now {info.state}", file=sys.stderr)
    if target is State.STOPPED and info.exit is not None:
        print(info.exit["code"])      # like `docker wait`: the program's exit code
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    instance = _resolve(args.vm)
    info = InstanceInfo.of(instance, trio.run(lifecycle.analyze, instance))
    if args.svg is not None:
        svg = chart.render_svg(info.timeline, title=f"kindling boot of {info.name} "
                               f"({info.id}), boot {info.boot}",
                               time_to_running=info.time_to_running)
        try:
            Path(args.svg).write_text(svg)
        except OSError as e:
            die(f"cannot write {args.svg}: {e.strerror}")
    if args.json:
        _print_json(_summary(info) | {"time_to_running": info.time_to_running,
                                      "timeline": info.timeline.to_json(), "svg": (
                                          str(args.svg) if args.svg else None)})
        return 0
    print(f"instance {info.name} ({info.id}): {info.state}, boot {info.boot}")
    if info.time_to_running is not None:
        print(f"time to Running: {info.time_to_running:.3f} s (create/start to Running, "
              "as the host saw it)")
    else:
        print("time to Running: - (not Running in this boot yet)")
    text = format_timeline(info.timeline)
    if text:
        print(text)
    if args.svg is not None:
        print(f"chart written to {args.svg}")
    return 0


# --- exec / cp / stat (the agent) ---------------------------------------------------

def cmd_exec(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        die("no command given", hint="kindling exec VM -- CMD [ARG...]")
    env = dict(prepare.parse_env(args.env)) or None
    user = args.user
    if user is not None and user.isdigit():
        user = int(user)
    return trio.run(partial(agent_ops.exec_command, args.vm, command, env=env, cwd=args.workdir,
                            user=user, tty=args.tty, interactive=args.interactive,
                            timeout=args.timeout))


def cmd_cp(args: argparse.Namespace) -> int:
    result = trio.run(agent_ops.copy, args.src, args.dst)
    if args.json:
        _print_json({"entries": result.entries, "bytes": result.bytes, "skipped": result.skipped})
    return 0


def cmd_stat(args: argparse.Namespace) -> int:
    st = trio.run(agent_ops.stat, args.target)
    fields = {"exists": st.exists, "type": st.type, "mode": None if st.mode is None else oct(st.mode),
              "size": st.size, "uid": st.uid, "gid": st.gid, "target": st.target}
    if args.json:
        _print_json(fields)
    else:
        for key, value in fields.items():
            if value is not None:
                print(f"{key}: {value}")
    return 0 if st.exists else 1


# --- volumes -----------------------------------------------------------------------

def cmd_volume_create(args: argparse.Namespace) -> int:
    image = volumes.create(_home(), args.volume_name, args.size)
    if args.json:
        _print_json({"name": args.volume_name, "path": str(image), "size": image.stat().st_size})
    else:
        print(image)
    return 0


# --- build -------------------------------------------------------------------------

def cmd_build(args: argparse.Namespace) -> int:
    from image_build import cli as builder
    from image_build.errors import BuildError
    try:
        return int(builder.main_from_args(args) or 0)
    except BuildError as e:
        die(f"build failed: {e}")


# --- main --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Boot microVMs under QEMU, run a program in each, and report truthfully "
                    "when the guest is ready.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)

    def command(name, func, help, *, aliases=(), error_code=EXIT_ERROR, json_output=True,
                **kwargs):
        p = sub.add_parser(name, help=help, aliases=list(aliases), **kwargs)
        _add_common(p, json_output=json_output)
        p.set_defaults(func=func, error_code=error_code)
        return p

    def vm_argument(p):
        p.add_argument("vm", metavar="VM", help="instance name, id or unique id prefix")

    run = command("run", cmd_run, "run a program in a fresh microVM", error_code=EXIT_KINDLING,
                  json_output=False,
                  description="Create a microVM, wait for it, stream the program's output and "
                              "exit with its exit code (create + wait + logs + exit code).  "
                              f"Errors of kindling itself exit with {EXIT_KINDLING}.",
                  usage=f"{PROG} run [OPTIONS] [-- CMD [ARG...]]")
    add_run_arguments(run)

    create = command("create", cmd_create, "create and boot an instance (returns while it is "
                     "still Initializing)", usage=f"{PROG} create [OPTIONS] [-- CMD [ARG...]]",
                     description="Create an instance running CMD and boot it.  Returns once the "
                                 "guest has been started, usually while it is still "
                                 "Initializing; prints the instance id.")
    add_create_arguments(create)

    start = command("start", cmd_start, "boot a stopped instance again")
    vm_argument(start)
    stop = command("stop", cmd_stop, "stop an instance",
                   description="ACPI power-down (Running instances get --time seconds to act "
                               "on it), then QMP quit, SIGTERM, SIGKILL.")
    vm_argument(stop)
    stop.add_argument("--time", "-t", type=_seconds, default=lifecycle.DEFAULT_STOP_TIMEOUT,
                      metavar="S", help="seconds to wait for a power-down (default: %(default)g)")
    delete = command("delete", cmd_delete, "stop an instance at once and remove it",
                     aliases=("rm",))
    vm_argument(delete)
    command("list", cmd_list, "list the instances", aliases=("ps",))
    inspect = command("inspect", cmd_inspect, "show an instance's state, markers and details")
    vm_argument(inspect)
    logs = command("logs", cmd_logs, "show an instance's logs")
    vm_argument(logs)
    logs.add_argument("--follow", "-f", action="store_true",
                      help="keep printing new lines until the VM stops")
    logs.add_argument("--source", choices=("app", "vmm"), default="app",
                      help="app: the serial console, boot markers filtered out (default); "
                           "vmm: QEMU's own messages")
    wait = command("wait", cmd_wait, "wait until an instance is running or stopped")
    vm_argument(wait)
    wait.add_argument("--for", dest="target", choices=("running", "stopped"), required=True,
                      help="the state to wait for")
    wait.add_argument("--timeout", type=_positive_float, default=None, metavar="S",
                      help="give up after S seconds (default: wait forever)")
    analyze = command("analyze", cmd_analyze, "show an instance's boot timeline")
    vm_argument(analyze)
    analyze.add_argument("--svg", type=Path, metavar="FILE", help="also draw it as an SVG chart")

    build = command("build", cmd_build, "build the kernel, initrd and rootfs images",
                    error_code=EXIT_KINDLING, json_output=False,
                    description="Build (or reuse from the cache) the VM images.")
    from image_build import cli as builder
    builder.add_arguments(build)

    ex = command("exec", cmd_exec, "run a command in a Running instance (through the agent)",
                 json_output=False)
    ex.add_argument("-i", "--interactive", action="store_true", help="stream our stdin to it")
    ex.add_argument("-t", "--tty", action="store_true", help="give it a pseudo-terminal")
    ex.add_argument("--env", "-e", action="append", default=[], metavar="NAME=VALUE")
    ex.add_argument("--workdir", "-w", metavar="DIR")
    ex.add_argument("--user", "-u", metavar="UID[:GID]|NAME")
    ex.add_argument("--timeout", type=_positive_float, metavar="S",
                    help="kill its process group after S seconds (exit code 124)")
    vm_argument(ex)
    ex.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    cp = command("cp", cmd_cp, "copy files or trees between the host and a Running instance")
    cp.add_argument("src", metavar="SRC", help="a local path, or VM:/path")
    cp.add_argument("dst", metavar="DST", help="a local path, or VM:/path")
    st = command("stat", cmd_stat, "describe a path in a Running instance")
    st.add_argument("target", metavar="VM:/path")

    volume = sub.add_parser("volume", help="manage volume images")
    volume_sub = volume.add_subparsers(dest="volume_command", metavar="COMMAND", required=True)
    vcreate = volume_sub.add_parser(
        "create", help="make an empty ext4 volume image (sparse, no mounting)",
        description="Make an empty ext4 volume in $KINDLING_HOME/volumes/NAME.img; attach it "
                    "with `--volume NAME:/path[:ro|rw|overlay]`.")
    vcreate.add_argument("volume_name", metavar="NAME")
    vcreate.add_argument("--size", required=True, type=_size, metavar="SIZE", help="e.g. 64M, 1G")
    _add_common(vcreate)
    vcreate.set_defaults(func=cmd_volume_create, error_code=EXIT_ERROR)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        try:
            return args.func(args)
        except BaseExceptionGroup as group:
            raise kindling_error_in(group) or group
    except KindlingError as e:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"{PROG}: hint: {e.hint}", file=sys.stderr)
        return e.exit_code if e.exit_code is not None else args.error_code
    except BrokenPipeError:
        # `kindling logs web | head`: the reader is gone; stop quietly, as `git log` does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141
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
        return args.error_code


if __name__ == "__main__":
    sys.exit(main())
