"""Boot soak (issue 15 §2): N consecutive `kindling run --accel tcg --no-headers -- true`.

Each boot runs the CLI as a child process (argv list) under its own outer timeout,
in a private KINDLING_HOME, with `--keep` so the console log of a hung boot survives.
A boot that outlives the timeout is a hang: before ending it, the vCPUs' registers
are read over QMP (`query-cpus-fast`, `info registers -a`) into the instance
directory, then `kindling run` gets SIGTERM (it stops the VM), then SIGKILL.
Instances of boots that exited 0 are removed as the soak goes.

Reported: raw hang rate (outer timeout hit; how many of those hangs the guest
kernel itself reported as a stalled CPU, which tells a hang from a slow boot on
a loaded host), the early-boot watchdog's relaunches (host_shim/watchdog.py: each one
a boot hung before PID 1 that the user did not see fail, with its reason, read from
the instance's metadata.json), user-visible failure rate (any boot
that did not exit 0 within the timeout), the median wall time of the good boots,
and the last console lines of every hung boot.

    .venv/bin/python bench/soak.py [--boots 300] [--timeout 60] [--json FILE]
        [--verbose-kernel] [--kernel-arg ARG ...] [--repo PATH] [--home DIR]

`--verbose-kernel` boots without the effect of `quiet` (`ignore_loglevel`) and with
`earlyprintk=serial,ttyS0 keep_bootcon`, so a hang shows where the kernel stopped.
Ctrl-C or SIGTERM ends the soak with a summary of the finished boots.
`--repo` runs the CLI of another Kindling checkout (e.g. /work/main) to compare.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERBOSE_KERNEL_ARGS = ("ignore_loglevel", "earlyprintk=serial,ttyS0", "keep_bootcon")
TAIL_LINES = 12
TERM_GRACE_S = 30
RCU_STALL = "detected stalls on CPUs"


@dataclass
class Boot:
    index: int
    wall_s: float
    returncode: int | None          # None: the outer timeout ended it
    instance: str | None = None     # kept only for boots that did not exit 0
    rcu_stall: bool = False         # the guest kernel reported a stalled CPU: a hang, not slowness
    relaunches: list[str] = field(default_factory=list)   # the early-boot watchdog's reasons
    last_console_lines: list[str] = field(default_factory=list)


def newest_instance(home: Path) -> Path | None:
    dirs = [p for p in (home / "instances").glob("*") if p.is_dir()]
    return max(dirs, key=lambda p: p.stat().st_mtime) if dirs else None


def console_tail(instance: Path, n: int = TAIL_LINES) -> list[str]:
    try:
        text = (instance / "logs" / "app.log").read_text(errors="replace")
    except OSError as e:
        return [f"(no console log: {e})"]
    return [line for line in text.splitlines() if line.strip()][-n:]


def relaunch_reasons(instance: Path) -> list[str]:
    """The early-boot watchdog's relaunches of the boot (host_shim/watchdog.py), if any."""
    try:
        meta = json.loads((instance / "metadata.json").read_text())
    except (OSError, ValueError):
        return []
    return [r.get("reason", "?") for r in meta.get("relaunches") or []]


def dump_vcpus(repo: Path, instance: Path) -> None:
    """Write the vCPUs' state (QMP) to instance/vcpus.txt, via Kindling's QMP client."""
    code = (
        "import sys, json, trio\n"
        "from host_shim import qmp\n"
        "sock = sys.argv[1]\n"
        "cpus = trio.run(qmp.execute, sock, 'query-cpus-fast')\n"
        "regs = trio.run(qmp.execute, sock, 'human-monitor-command',\n"
        "                {'command-line': 'info registers -a'})\n"
        "print(json.dumps(cpus, indent=1)); print(regs)\n"
    )
    out = instance / "vcpus.txt"
    try:
        r = subprocess.run([sys.executable, "-c", code, str(instance / "qmp.sock")], cwd=repo,
                           env=dict(os.environ, PYTHONPATH=str(repo)), capture_output=True,
                           text=True, timeout=30)
        out.write_text(r.stdout + r.stderr)
    except subprocess.TimeoutExpired:
        out.write_text("(QMP did not answer within 30 s)\n")


def end_boot(proc: subprocess.Popen) -> None:
    """SIGTERM `kindling run` (it stops its VM); SIGKILL its process group if it lingers."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=TERM_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=TERM_GRACE_S)


def one_boot(index: int, args, home: Path) -> Boot:
    # `run --timeout` above the outer one: only the outer timeout decides what is a hang.
    argv = [sys.executable, "-m", "host_shim.cli", "run", "--accel", "tcg", "--no-headers",
            "--keep", f"--timeout={2 * args.timeout:g}",
            *(f"--kernel-arg={a}" for a in args.kernel_arg), "--", "true"]
    env = dict(os.environ, KINDLING_HOME=str(home), PYTHONPATH=str(args.repo))
    start = time.monotonic()
    with open(home / "soak-cli.log", "a") as cli_log:
        proc = subprocess.Popen(argv, cwd=args.repo, env=env, stdout=cli_log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = proc.wait(timeout=args.timeout)
        except KeyboardInterrupt:       # the boot is not counted; its VM is not left behind
            end_boot(proc)
            raise
        except subprocess.TimeoutExpired:
            returncode = None
            instance = newest_instance(home)
            if instance is not None:
                dump_vcpus(args.repo, instance)
            end_boot(proc)
    boot = Boot(index, time.monotonic() - start, returncode)
    instance = newest_instance(home)
    if instance is not None:
        boot.relaunches = relaunch_reasons(instance)
    if instance is not None and returncode == 0:
        shutil.rmtree(instance)
    elif instance is not None:
        kept = home / "failed" / f"boot{index:04d}-{instance.name}"
        kept.parent.mkdir(exist_ok=True)
        instance.rename(kept)
        boot.instance, boot.last_console_lines = str(kept), console_tail(kept)
        boot.rcu_stall = RCU_STALL in (kept / "logs" / "app.log").read_text(errors="replace")
    return boot


def summarize(boots: list[Boot], args) -> dict:
    n = len(boots)
    hung = [b for b in boots if b.returncode is None]
    failed = [b for b in boots if b.returncode != 0]
    good = [b.wall_s for b in boots if b.returncode == 0]
    return {
        "command": f"kindling run --accel tcg --no-headers --timeout {2 * args.timeout:g} -- true",
        "repo": str(args.repo), "kernel_args": list(args.kernel_arg),
        "timeout_s": args.timeout, "boots": n,
        "hangs": len(hung), "raw_hang_rate": len(hung) / n if n else 0.0,
        "hangs_with_rcu_stall": sum(b.rcu_stall for b in hung),
        "relaunches": sum(len(b.relaunches) for b in boots),
        "boots_relaunched": sum(1 for b in boots if b.relaunches),
        "relaunch_reasons": [f"boot {b.index}: {r}" for b in boots for r in b.relaunches],
        "user_visible_failures": len(failed),
        "user_visible_failure_rate": len(failed) / n if n else 0.0,
        "median_wall_s": statistics.median(good) if good else None,
        "min_wall_s": min(good) if good else None, "max_wall_s": max(good) if good else None,
        "failed_boots": [asdict(b) for b in failed],
    }


def print_summary(s: dict) -> None:
    print(f"{s['boots']} boots of `{s['command']}` (repo {s['repo']}, "
          f"kernel args {' '.join(s['kernel_args']) or '-'}, timeout {s['timeout_s']:g} s)")
    print(f"  raw hang rate            {s['hangs']}/{s['boots']} = {s['raw_hang_rate']:.2%} "
          f"({s['hangs_with_rcu_stall']} with a kernel RCU stall report)")
    print(f"  early-boot relaunches    {s['relaunches']} in {s['boots_relaunched']} boots "
          "(hangs the watchdog caught: the boot then exited 0 unless listed below)")
    for reason in s["relaunch_reasons"]:
        print(f"    {reason}")
    print(f"  user-visible failures    {s['user_visible_failures']}/{s['boots']} = "
          f"{s['user_visible_failure_rate']:.2%}")
    if s["median_wall_s"] is not None:
        print(f"  wall time, good boots    median {s['median_wall_s']:.2f} s "
              f"({s['min_wall_s']:.2f}..{s['max_wall_s']:.2f})")
    for b in s["failed_boots"]:
        what = "hung" if b["returncode"] is None else f"exit {b['returncode']}"
        what += " (RCU stall)" if b["rcu_stall"] else ""
        print(f"  boot {b['index']}: {what} after {b['wall_s']:.1f} s; kept {b['instance']}")
        for line in b["last_console_lines"]:
            print(f"    | {line}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--boots", type=int, default=300)
    ap.add_argument("--timeout", type=float, default=60.0, help="outer timeout per boot (s)")
    ap.add_argument("--kernel-arg", action="append", default=[], metavar="ARG")
    ap.add_argument("--verbose-kernel", action="store_true",
                    help="add: " + " ".join(VERBOSE_KERNEL_ARGS))
    ap.add_argument("--repo", type=Path, default=ROOT, help="Kindling checkout to run")
    ap.add_argument("--home", type=Path, help="KINDLING_HOME to use (kept); default: a temp dir")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args(argv)
    if args.boots < 1 or args.timeout <= 0:
        ap.error("--boots must be >= 1 and --timeout > 0")
    if args.verbose_kernel:
        args.kernel_arg = [*VERBOSE_KERNEL_ARGS, *args.kernel_arg]
    args.repo = args.repo.resolve()
    return args


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` summarizes like Ctrl-C
    home = args.home or Path(tempfile.mkdtemp(prefix="kindling-soak-"))
    home.mkdir(parents=True, exist_ok=True)
    boots = []
    for i in range(args.boots):
        try:
            boots.append(one_boot(i, args, home))
        except KeyboardInterrupt:
            print(f"interrupted: summary of the {len(boots)} finished boots", file=sys.stderr)
            break
        b = boots[-1]
        state = "ok" if b.returncode == 0 else ("HUNG" if b.returncode is None else
                                                 f"exit {b.returncode}")
        print(f"boot {i}: {state} {b.wall_s:.2f} s", file=sys.stderr, flush=True)
    summary = summarize(boots, args)
    summary["home"] = str(home)
    print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0 if summary["user_visible_failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
