"""The `kindling` command: argument parsing, output, and the one error boundary.

A thin layer over host_shim/lifecycle.py (and runner.py for `run`).  Every
user-facing failure is a KindlingError raised somewhere below (the image builder's
BuildError is converted to one); `main` is the only place that catches it, prints
`kindling: error: ...` (plus a hint) and exits 125 -- for every command, usage errors
included -- so the exit codes of a program (`run`, `exec`) stay apart, as docker's do.
Tracebacks only with --debug.  create's and run's options come from host_shim/options.py;
every command takes --json, which prints an InstanceInfo (host_shim/info.py) for an
instance, JSON lines of events for run and exec (host_shim/events.py).
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

from . import (agent_ops, chart, events, fork, image_cli, lifecycle, metadata, options, runner, serve,
               sizes, standby, template_cli, volumes, watchdog)
from .errors import (EXIT_KINDLING, KindlingError, build_errors, die, from_build_error,
                     kindling_error_in)
from .info import InstanceInfo
from .instance import kindling_home
from .state import State
from .timeline import format_timeline

PROG = "kindling"


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error exits 125 like every other error of Kindling."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(EXIT_KINDLING, f"{PROG}: error: {message}\n")


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


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks for errors")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _home() -> Path:
    return kindling_home()


def _resolve(ref: str):
    return metadata.resolve(_home(), ref)[0]


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True), flush=True)


def _about(ref: str) -> dict:
    """id, name and state of the instance `ref` (as last recorded), for cp/stat/exec --json."""
    instance, meta = metadata.resolve(_home(), ref)
    return {"id": meta.id, "name": meta.name, "state": str(meta.state)}


# --- run -----------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    opts = options.from_args(options.RunOptions, args, _home())
    if not args.json:
        return runner.run(opts)
    code = runner.run(opts, emit=events.emit)
    events.exit_event(code)
    return code


# --- instances -------------------------------------------------------------------------

def cmd_create(args: argparse.Namespace) -> int:
    opts = options.from_args(options.CreateOptions, args, _home())
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
            _print_json(info.to_json())
        else:
            print(args.vm)
        return 0
    return command


cmd_start = _simple(lambda args: lifecycle.start)
cmd_stop = _simple(lambda args: partial(lifecycle.stop, timeout=args.time))
cmd_delete = _simple(lambda args: lifecycle.delete)
cmd_pause = _simple(lambda args: standby.pause)
cmd_resume = _simple(lambda args: standby.resume)
cmd_standby = _simple(lambda args: standby.standby)
cmd_restore = _simple(lambda args: standby.restore)


def cmd_fork(args: argparse.Namespace) -> int:
    instance, meta = trio.run(partial(fork.fork, args.vm, args.name, home=_home(),
                                      from_running=args.from_running, target=args.target_state))
    if args.json:
        _print_json(InstanceInfo.of(instance, meta).to_json())
    else:
        print(meta.name)
    return 0


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def cmd_list(args: argparse.Namespace) -> int:
    infos = [InstanceInfo.of(i, m) for i, m in trio.run(lifecycle.list_instances, _home())]
    if args.json:
        _print_json([i.to_json() for i in infos])
        return 0
    rows = [("ID", "NAME", "STATE", "TO RUNNING", "CREATED", "COMMAND")]
    now = time.time()
    for i in infos:
        ttr = f"{i.time_to_running:.2f}s" if i.time_to_running is not None else "-"
        rows.append((i.id, i.name, str(i.state), ttr, _ago(now - i.created_at),
                     " ".join(i.command)[:40] or "-"))
    _print_table(rows)
    return 0


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


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
    lines.append(("relaunches", str(len(info.relaunches))))
    lines += [("relaunched", watchdog.describe(r)) for r in info.relaunches]
    lines.append(("directory", str(info.dir)))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key + ':':<{width + 1}} {value}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    instance, meta = metadata.resolve(_home(), args.vm)
    if args.json:
        about = {"id": meta.id, "name": meta.name, "state": str(meta.state), "source": args.source}

        def write(line: str) -> None:
            print(json.dumps(about | {"line": line}), flush=args.follow)
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
        _print_json(info.to_json())
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
        svg = chart.render_instance(info)
        try:
            Path(args.svg).write_text(svg)
        except OSError as e:
            die(f"cannot write {args.svg}: {e.strerror}")
    if args.json:
        _print_json(info.to_json() | {"svg": str(args.svg) if args.svg else None})
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
    env = dict(options.parse_env(args.env)) or None
    user = args.user
    if user is not None and user.isdigit():
        user = int(user)
    streams = {}
    if args.json:
        async def to_events(stream: str, data: bytes) -> None:
            events.output(stream, data)
        streams = {"stdout": partial(to_events, "stdout"), "stderr": partial(to_events, "stderr")}
    code = trio.run(partial(agent_ops.exec_command, args.vm, command, env=env, cwd=args.workdir,
                            user=user, tty=args.tty, interactive=args.interactive,
                            timeout=args.timeout, started=_started_event if args.json else None,
                            **streams))
    if args.json:
        events.exit_event(code)
    return code


def _started_event(instance, meta) -> None:
    events.emit("state", id=meta.id, name=meta.name, state=str(meta.state))


def cmd_cp(args: argparse.Namespace) -> int:
    result = trio.run(agent_ops.copy, args.src, args.dst)
    if args.json:
        ref = agent_ops.split_remote(args.src)[0] or agent_ops.split_remote(args.dst)[0]
        _print_json(_about(ref) | {"entries": result.entries, "bytes": result.bytes,
                                   "skipped": result.skipped})
    return 0


def cmd_stat(args: argparse.Namespace) -> int:
    st = trio.run(agent_ops.stat, args.target)
    fields = {"exists": st.exists, "type": st.type, "mode": None if st.mode is None else oct(st.mode),
              "size": st.size, "uid": st.uid, "gid": st.gid, "target": st.target}
    if args.json:
        _print_json(_about(agent_ops.split_remote(args.target)[0]) | fields)
    else:
        for key, value in fields.items():
            if value is not None:
                print(f"{key}: {value}")
    return 0 if st.exists else 1       # like `test -e`: a missing path is an answer


# --- volumes -----------------------------------------------------------------------

def cmd_volume_create(args: argparse.Namespace) -> int:
    volume = volumes.create(_home(), args.volume_name, args.size)
    if args.json:
        _print_json(volume.to_json())
    else:
        print(volume.path)
    return 0


def cmd_volume_list(args: argparse.Namespace) -> int:
    found = volumes.list_volumes(_home())
    if args.json:
        _print_json([v.to_json() for v in found])
        return 0
    rows = [("NAME", "SIZE", "USED BY", "PATH")] + [
        (v.name, sizes.human(v.size), ",".join(v.used_by) or "-", str(v.path)) for v in found]
    _print_table(rows)
    return 0


def cmd_volume_rm(args: argparse.Namespace) -> int:
    volume = volumes.remove(_home(), args.volume_name)
    if args.json:
        _print_json(volume.to_json())
    else:
        print(volume.name)
    return 0


# --- build -------------------------------------------------------------------------

def cmd_build(args: argparse.Namespace) -> int:
    from image_build import cli as builder
    with build_errors("build failed"):
        artifacts, opts = builder.build_from_args(args)
    if args.json:
        _print_json(builder.describe(artifacts, opts))
    else:
        builder.print_built(artifacts, opts)
    return 0


# --- main --------------------------------------------------------------------------

def _command(sub, name: str, func, help: str, **kwargs) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, **kwargs)
    _add_common(p)
    p.set_defaults(func=func)
    return p


def _vm_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("vm", metavar="VM", help="instance name, id or unique id prefix")


def _add_create_and_run(sub) -> None:
    run = _command(sub, "run", cmd_run, "run a program in a fresh microVM",
                   description="Create a microVM, wait for it, stream the program's output and "
                               "exit with its exit code (create + wait + logs + exit code).  "
                               f"Errors of kindling itself exit with {EXIT_KINDLING}.  With "
                               "--json: JSON lines of events (state, output, exit).",
                   usage=f"{PROG} run [OPTIONS] [-- CMD [ARG...]]")
    options.add_arguments(run, "run")
    create = _command(sub, "create", cmd_create, "create and boot an instance (returns while it "
                      "is still Initializing)", usage=f"{PROG} create [OPTIONS] [-- CMD [ARG...]]",
                      description="Create an instance running CMD and boot it.  Returns once the "
                                  "guest has been started, usually while it is still "
                                  "Initializing; prints the instance id.")
    options.add_arguments(create, "create")


def _add_lifecycle(sub) -> None:
    _vm_argument(_command(sub, "start", cmd_start, "boot a stopped instance again"))
    stop = _command(sub, "stop", cmd_stop, "stop an instance",
                    description="ACPI power-down (Running instances get --time seconds to act "
                                "on it), then QMP quit, SIGTERM, SIGKILL.  Drops the instance's "
                                "snapshot: a Standby instance becomes Stopped.")
    _vm_argument(stop)
    stop.add_argument("--time", "-t", type=_seconds, default=lifecycle.DEFAULT_STOP_TIMEOUT,
                      metavar="S", help="seconds to wait for a power-down (default: %(default)g)")
    _vm_argument(_command(sub, "delete", cmd_delete, "stop an instance at once and remove it",
                          aliases=["rm"]))
    _add_snapshot_commands(sub)
    _command(sub, "list", cmd_list, "list the instances", aliases=["ps"])
    _vm_argument(_command(sub, "inspect", cmd_inspect,
                          "show an instance's state, markers and details"))
    logs = _command(sub, "logs", cmd_logs, "show an instance's logs")
    _vm_argument(logs)
    logs.add_argument("--follow", "-f", action="store_true",
                      help="keep printing new lines until the VM stops")
    logs.add_argument("--source", choices=("app", "vmm"), default="app",
                      help="app: the serial console, boot markers filtered out (default); "
                           "vmm: QEMU's own messages")
    wait = _command(sub, "wait", cmd_wait, "wait until an instance is running or stopped")
    _vm_argument(wait)
    wait.add_argument("--for", dest="target", choices=("running", "stopped"), required=True,
                      help="the state to wait for")
    wait.add_argument("--timeout", type=_positive_float, default=None, metavar="S",
                      help="give up after S seconds.  For running it is the boot deadline "
                           "(default: %g): past it a guest still booting is stopped and the "
                           "error (exit 125) names the last boot stage and marker seen; for "
                           "stopped the default is to wait forever"
                           % options.DEFAULT_BOOT_TIMEOUT)
    analyze = _command(sub, "analyze", cmd_analyze, "show an instance's boot timeline")
    _vm_argument(analyze)
    analyze.add_argument("--svg", type=Path, metavar="FILE", help="also draw it as an SVG chart")


def _add_snapshot_commands(sub) -> None:
    for name, func, help, description in (
            ("pause", cmd_pause, "pause a Running instance's vCPUs", "Running -> Paused."),
            ("resume", cmd_resume, "resume a Paused instance", "Paused -> Running."),
            ("standby", cmd_standby, "save a Running instance's whole VM to disk and end QEMU",
             "Running -> Paused -> Standby: the VM's state goes to a snapshot in the instance "
             "directory, QEMU ends and the host gets its memory back."),
            ("restore", cmd_restore, "resume a Standby instance from its snapshot",
             "Standby -> Paused -> Running: a new QEMU with the same devices and disks loads "
             "the snapshot.  The snapshot is kept until the next standby, stop or delete.")):
        _vm_argument(_command(sub, name, func, help, description=description))
    _add_fork(sub)


def _add_fork(sub) -> None:
    p = _command(sub, "fork", cmd_fork, "a new instance from a Stopped or Standby one",
                 description="A new instance with its own copy of the source's disks, logs and "
                             "network namespace; from a Standby source, its own copy of the "
                             "snapshot (restoring it continues the source's memory).  A rw "
                             "volume refuses the fork.")
    _vm_argument(p)
    p.add_argument("--name", required=True, help="the new instance's name")
    p.add_argument("--from-running", action="store_true",
                   help="fork a Running source: put it in standby, fork, restore it")
    p.add_argument("--target-state", choices=[s.value for s in fork.TARGETS], default=None,
                   help="the fork's state (default: the source's state at fork time)")


def _add_agent_commands(sub) -> None:
    ex = _command(sub, "exec", cmd_exec, "run a command in a Running instance (through the "
                  "agent)", description="Run CMD in a Running instance and exit with its exit "
                  "code.  With --json: JSON lines of events (state, output, exit).")
    ex.add_argument("-i", "--interactive", action="store_true", help="stream our stdin to it")
    ex.add_argument("-t", "--tty", action="store_true", help="give it a pseudo-terminal")
    ex.add_argument("--env", "-e", action="append", default=[], metavar="NAME=VALUE")
    ex.add_argument("--workdir", "-w", metavar="DIR")
    ex.add_argument("--user", "-u", metavar="UID[:GID]|NAME")
    ex.add_argument("--timeout", type=_positive_float, metavar="S",
                    help="kill its process group after S seconds (exit code 124)")
    _vm_argument(ex)
    ex.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    cp = _command(sub, "cp", cmd_cp, "copy files or trees between the host and a Running "
                  "instance")
    cp.add_argument("src", metavar="SRC", help="a local path, or VM:/path")
    cp.add_argument("dst", metavar="DST", help="a local path, or VM:/path")
    st = _command(sub, "stat", cmd_stat, "describe a path in a Running instance (exit 1 if it "
                  "does not exist)")
    st.add_argument("target", metavar="VM:/path")


def _add_volume_commands(sub) -> None:
    volume = sub.add_parser("volume", help="manage volume images (create, list, rm)")
    volume_sub = volume.add_subparsers(dest="volume_command", metavar="COMMAND", required=True)
    vcreate = _command(volume_sub, "create", cmd_volume_create,
                       "make an empty ext4 volume image (sparse, no mounting)",
                       description="Make an empty ext4 volume in $KINDLING_HOME/volumes/NAME.img;"
                                   " attach it with `--volume NAME:/path[:ro|rw|overlay]`.")
    vcreate.add_argument("volume_name", metavar="NAME")
    vcreate.add_argument("--size", required=True, metavar="SIZE",
                         help=f"e.g. 64M, 1G; a bare number is bytes (at least "
                              f"{sizes.human(volumes.MIN_SIZE)})")
    _command(volume_sub, "list", cmd_volume_list, "list the volumes and the instances using them",
             aliases=["ls"])
    vrm = _command(volume_sub, "rm", cmd_volume_rm, "remove a volume no instance uses",
                   description="Remove a volume image; refused while an instance (in any state "
                               "but deleted) attaches it.")
    vrm.add_argument("volume_name", metavar="NAME")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Boot microVMs under QEMU, run a program in each, and report truthfully "
                    "when the guest is ready.  Errors of kindling itself exit with "
                    f"{EXIT_KINDLING}.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    _add_create_and_run(sub)
    _add_lifecycle(sub)
    build = _command(sub, "build", cmd_build, "build the kernel, initrd and rootfs images",
                     description="Build (or reuse from the cache) the VM images.")
    from image_build import cli as builder
    builder.add_arguments(build)
    _add_agent_commands(sub)
    _add_volume_commands(sub)
    image_cli.add_commands(sub, _command)
    template_cli.add_commands(sub, _command)
    serve.add_command(sub, _command)
    return parser


def _report(e: KindlingError, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"{PROG}: error: {e.message}", file=sys.stderr)
    if e.hint:
        print(f"{PROG}: hint: {e.hint}", file=sys.stderr)
    return e.exit_code if e.exit_code is not None else EXIT_KINDLING


def _call(args: argparse.Namespace) -> int:
    """The command, with the errors of a nursery or of the image builder as KindlingError."""
    from image_build.errors import BuildError
    try:
        return args.func(args)
    except BaseExceptionGroup as group:
        raise kindling_error_in(group) or group
    except BuildError as e:      # a call into image_build not wrapped in build_errors()
        raise from_build_error(e) from e


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _call(args)
    except KindlingError as e:
        return _report(e, args.debug)
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
        return EXIT_KINDLING


if __name__ == "__main__":
    sys.exit(main())
