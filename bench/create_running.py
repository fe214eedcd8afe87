"""create -> Running (issue 7, benchmarks 1 and 5): baseline vs default vs the floor.

Three variants with the same kernel, machine, images and config -- `--net`,
two 64M volumes mounted rw at /data1 and /data2, the default initrd (kernel
headers shipped), the agent on virtio-serial, program `sleep 3600`:

  baseline  `--kernel-arg kindling_strategy=baseline`: network then volumes one
            after the other, agent readiness by polling its ready file (100 ms),
            the kernel headers installed before the program starts
  default   concurrent stages, the FD handshake, headers in the background
  floor     `--initrd FLOOR --agent none --no-headers`: bench/floor.py's busybox
            /init that only prints PROGRAM-START and execs the program (the
            same QEMU devices are attached; nothing in the guest uses them)

Runs are interleaved (b, d, f, b, d, f, ...) so that the noise of a shared
machine hits all three alike; every run is a fresh instance in one private
KINDLING_HOME (a short /tmp path: the QMP socket path must fit in sun_path).
One default and one floor boot first warm the build cache and the page cache
(not counted).

The measure: host wall time from just before `kindling create` until
`kindling wait VM --for running` returns.  `wait` follows the serial log
itself (~50 ms resolution) in one process, where polling `inspect --json`
would pay a CLI start per poll; both include the CLI's own start-up, which is
the same for every variant.  Beside it, the host shim's own `time_to_running`
(create request -> Running, from `inspect --json`).  Then `delete` (which also
removes the instance's network namespace).

Prints median/min/max per variant, the ratios baseline/default (target >= 3.4)
and default/floor (target <= 1.5), the PID 1 stage breakdown of one default
run (KINDLING-STAGE lines, bench/boot.py's parser) and where the headers
install ran in one baseline run.

    .venv/bin/python bench/create_running.py [--runs 5] [--variants baseline,default,floor] [--json FILE]

`--variants` picks and orders the variants; `early` is `default` with the agent
forked before PID 1's imports (`--kernel-arg kindling_agent_fork=early`, issue 14);
`template` is `default` created with `--template` (issue 12): one template with the
same image and VM options and two volume slots is made once before the runs (not
counted: its build time is reported), each run restores it with its own disks and
network; its "restore" is the host's launch -> guest started (QEMU's start, the
snapshot loaded, `cont`, the resume line answered).  Target: template <= 0.7x floor.
The template has shared memory (the default: its RAM in a file that clones map
privately; the snapshot holds device state only); `template-private` is the same with a
`template create --private-memory` template (its RAM in the snapshot, read by each restore).

`--runs 1` is the CI smoke run.
"""

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from boot import stages_of, summary  # noqa: E402  (bench/boot.py, this script's folder)
from floor import floor_initrd  # noqa: E402
from image_build.run import CommandError, run  # noqa: E402

from tests.vm import qemu_pids_using  # noqa: E402

VARIANTS = ("baseline", "default", "floor")
EXTRA_VARIANTS = ("early", "template", "template-private")  # issue 14: the agent forked before PID 1's imports;
                                        # issue 12: create --template
TEMPLATE = "bench"
TARGET_TEMPLATE = 0.7       # template / floor
VOLUMES = (("v1", "/data1"), ("v2", "/data2"))
VOLUME_SIZE = "64M"
PROGRAM = ("sleep", "3600")
BOOT_TIMEOUT = 1200         # one boot; the baseline's headers install is 20-35 s on an idle host,
                            # and took 100-600+ s on this shared 2-core machine at load 10-30
CLI_TIMEOUT = 120
TARGET_SPEEDUP = 3.4        # baseline / default
TARGET_FLOOR = 1.5          # default / floor


class BenchError(Exception):
    pass


def kindling(home, *argv, timeout=CLI_TIMEOUT, check=True):
    env = dict(os.environ, KINDLING_HOME=str(home), KINDLING_ACCEL="tcg")
    r = run([sys.executable, "-m", "host_shim.cli", *argv], cwd=ROOT, env=env, check=False,
            timeout=timeout)
    if check and r.returncode != 0:
        raise BenchError(f"kindling {shlex.join(argv)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return r


def create_argv(variant, name, floor):
    argv = ["create", "--accel", "tcg", "--name", name, "--net"]
    for image, path in VOLUMES:
        argv += ["--volume", f"{image}:{path}"]
    if variant == "floor":
        argv += ["--initrd", str(floor), "--agent", "none", "--no-headers"]
    else:
        argv += ["--agent", "serial"]
    if variant == "baseline":
        argv += ["--kernel-arg", "kindling_strategy=baseline"]
    if variant == "early":
        argv += ["--kernel-arg", "kindling_agent_fork=early"]
    if variant.startswith("template"):
        argv += ["--template", TEMPLATE + variant[len("template"):]]
    return [*argv, "--", *PROGRAM]


def make_template(home, variant="template"):
    """A template variant's template (not counted): its record as template.json says."""
    t0 = time.monotonic()
    private = ["--private-memory"] if variant == "template-private" else []
    r = kindling(home, "template", "create", "--json", TEMPLATE + variant[len("template"):],
                 "--accel", "tcg", "--net", "--agent", "serial", "--volume-slots",
                 str(len(VOLUMES)), *private, timeout=BOOT_TIMEOUT)
    made = json.loads(r.stdout)
    return {"wall_s": time.monotonic() - t0, "build_seconds": made["build_seconds"],
            "checkpoint_seconds": made["checkpoint_seconds"], "vmstate_bytes": made["vmstate_size"]}


def host_event(info, name):
    return next((e["at"] for e in info.get("timeline", {}).get("host", ()) if e["name"] == name), None)


def guest_stages(app_log, want, deadline):
    """The KINDLING-STAGE lines; `program-start`'s line follows PROGRAM-START by a moment."""
    while True:
        stages = stages_of(app_log)
        if want in stages or time.monotonic() > deadline:
            return stages
        time.sleep(0.1)


def one_run(home, variant, name, floor):
    t0 = time.monotonic()
    kindling(home, *create_argv(variant, name, floor), timeout=BOOT_TIMEOUT)
    try:
        try:
            kindling(home, "wait", name, "--for", "running", "--timeout", str(BOOT_TIMEOUT),
                     timeout=BOOT_TIMEOUT + 30)
        except BenchError as e:
            raise BenchError(f"{e}\nits last boot stages and markers:\n{last_boot_lines(home, name)}") from None
        wall = time.monotonic() - t0
        info = json.loads(kindling(home, "inspect", "--json", name).stdout)
        stages = {}
        launch, started = host_event(info, "launch"), host_event(info, "guest started")
        restore = (started - launch if variant.startswith("template") and None not in (launch, started)
                   else None)
        if variant != "floor":
            stages = guest_stages(Path(info["dir"]) / "logs" / "app.log", "program-start",
                                  time.monotonic() + 10)
    finally:
        kindling(home, "delete", name, check=False)
    return {"wall_s": wall, "time_to_running_s": info.get("time_to_running"), "stages": stages,
            "restore_s": restore}


def last_boot_lines(home, name, keep=12):
    """The instance's last KINDLING/HYPEMAN lines, for a failure message (the home is removed)."""
    r = kindling(home, "inspect", "--json", name, check=False)
    try:
        log = Path(json.loads(r.stdout)["dir"]) / "logs" / "app.log"
        lines = log.read_text(errors="replace").splitlines()
    except (ValueError, KeyError, OSError) as e:
        return f"(no serial log: {e})"
    return "\n".join([line for line in lines if "KINDLING-" in line or "HYPEMAN-" in line][-keep:])


def cleanup(home):
    """Leave no VM, namespace or file behind, whatever happened."""
    instances = home / "instances"
    for meta in instances.glob("*/metadata.json") if instances.is_dir() else ():
        try:
            kindling(home, "delete", meta.parent.name, check=False)
        except CommandError:       # timed out
            pass
        for pid in qemu_pids_using(meta.parent):    # only the VMs this benchmark started
            os.kill(pid, signal.SIGKILL)
        if os.path.exists(f"/run/netns/kindling-{meta.parent.name}"):
            run(["ip", "netns", "del", f"kindling-{meta.parent.name}"], check=False, timeout=30)
    shutil.rmtree(home, ignore_errors=True)


def measure(runs, floor, variants=VARIANTS):
    results = {v: [] for v in variants}      # + "template_build" (a dict) with the template
    home = Path(tempfile.mkdtemp(prefix="kcr-", dir="/tmp"))
    try:
        for image, _ in VOLUMES:
            kindling(home, "volume", "create", image, "--size", VOLUME_SIZE)
        for variant in ("default", "floor"):   # builds/caches images, warms the page cache
            one_run(home, variant, f"warm-{variant}", floor)
        for variant in ("template", "template-private"):
            if variant in variants:
                results[f"{variant}_build"] = make_template(home, variant)
                one_run(home, variant, f"warm-{variant}", floor)
        for i in range(runs):
            for variant in variants:
                r = one_run(home, variant, f"{variant[0]}{i}", floor)
                results[variant].append(r)
                print(f"run {i + 1}/{runs} {variant:8}: wall {r['wall_s']:6.2f} s, "
                      f"time_to_running {r['time_to_running_s']:6.2f} s", file=sys.stderr)
    finally:
        cleanup(home)
    return results, home


def stage_table(stages):
    rows = sorted(stages.items(), key=lambda kv: kv[1][0])
    return [f"  {name:16} {start:8.3f} {end - start:9.3f}" for name, (start, end) in rows]


def ratio_lines(med):
    """The target ratios, for the variants measured; {name: value} beside."""
    lines, ratios = [], {}
    if "baseline" in med and "default" in med:
        ratios["ratio_baseline_over_default"] = r = med["baseline"] / med["default"]
        lines.append(f"baseline / default = {r:.2f}x   (target >= {TARGET_SPEEDUP}x: "
                     f"{'met' if r >= TARGET_SPEEDUP else 'MISSED'})")
    for v in ("default", "early"):
        if v in med and "floor" in med:
            ratios[f"ratio_{v}_over_floor"] = r = med[v] / med["floor"]
            lines.append(f"{v + ' / floor':18} = {r:.2f}x   (target <= {TARGET_FLOOR}x: "
                         f"{'met' if r <= TARGET_FLOOR else 'MISSED'})")
    return lines, ratios


def template_lines(results, builds, med, variant="template"):
    if variant not in results:
        return [], {}
    build = builds[variant]
    restores = [r["restore_s"] for r in results[variant] if r["restore_s"] is not None]
    lines = ["", f"{variant}: built once in {build['build_seconds']:.1f} s (checkpoint "
                 f"{build['checkpoint_seconds']:.1f} s after QEMU's start, snapshot "
                 f"{build['vmstate_bytes'] / 2**20:.0f} MiB); restore (launch -> guest started) "
                 f"median {statistics.median(restores):.2f} s"]
    key = variant.replace("-", "_")
    numbers = {f"{key}_build": build, f"median_{key}_restore_s": statistics.median(restores)}
    if "floor" in med:
        numbers[f"ratio_{key}_over_floor"] = r = med[variant] / med["floor"]
        lines.append(f"{variant + ' / floor':19} = {r:.2f}x   (target <= {TARGET_TEMPLATE}x: "
                     f"{'met' if r <= TARGET_TEMPLATE else 'MISSED'})")
    return lines, numbers


def report(results, runs, argv_shown):
    builds = {v: results.pop(f"{v}_build") for v in ("template", "template-private")
              if f"{v}_build" in results}
    med_walls = {v: statistics.median([r["wall_s"] for r in per_run]) for v, per_run in results.items()}
    tlines, tnumbers = [], {}
    for variant in builds:
        more_lines, more_numbers = template_lines(results, builds, med_walls, variant)
        tlines += more_lines
        tnumbers.update(more_numbers)
    walls = {v: [r["wall_s"] for r in per_run] for v, per_run in results.items()}
    med = {v: statistics.median(w) for v, w in walls.items()}
    host_med = {v: statistics.median([r["time_to_running_s"] for r in per_run])
                for v, per_run in results.items()}
    lines = [f"create -> Running: {runs} run(s) per variant, interleaved, TCG, --net + 2 volumes (rw), "
             f"agent serial (floor: none)",
             f"{'variant':10} {'median':>8} {'min':>8} {'max':>8}   {'host time_to_running median':>28}"]
    for v in results:
        m, lo, hi = summary(walls[v])
        lines.append(f"{v:10} {m:8.2f} {lo:8.2f} {hi:8.2f}   {host_med[v]:28.2f}")
    ratios_text, ratios = ratio_lines(med)
    lines += ["", *ratios_text, *tlines]
    ratios.update(tnumbers)
    for v in ("default", "early", "template", "template-private"):
        if v in results:
            one = results[v][len(results[v]) // 2]
            lines += ["", f"PID 1 stages of one {v} run (guest clock, s):",
                      f"  {'stage':16} {'start':>8} {'duration':>9}", *stage_table(one["stages"])]
    if "baseline" in results:
        lines += baseline_headers_lines(results["baseline"][0]["stages"])
    lines += ["", f"reproduce: {shlex.join(argv_shown)}"]
    return "\n".join(lines), {"median_wall_s": med, "median_time_to_running_s": host_med, **ratios}


def baseline_headers_lines(base):
    if "headers-wait" not in base or "program-start" not in base:
        return []
    spawn, wait = base.get("headers-spawn", base["headers-wait"]), base["headers-wait"]
    return ["", f"baseline headers install (run 1, guest clock): {spawn[0]:.3f} -> {wait[1]:.3f} s "
                f"({wait[1] - spawn[0]:.2f} s), after the network ({base['network'][1]:.3f}) and "
                f"volumes ({base['volumes'][1]:.3f}), before the agent gate "
                f"({base['agent'][0]:.3f}) and PROGRAM-START ({base['program-start'][1]:.3f})"]


def parse_variants(text):
    variants = tuple(v for v in text.split(",") if v)
    unknown = [v for v in variants if v not in VARIANTS + EXTRA_VARIANTS]
    if unknown or not variants:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of "
                                         f"{', '.join(VARIANTS + EXTRA_VARIANTS)}")
    return variants


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="runs per variant (default: %(default)s)")
    ap.add_argument("--variants", type=parse_variants, default=VARIANTS,
                    help="comma-separated, in the order run (default: baseline,default,floor)")
    ap.add_argument("--json", type=Path, help="write every raw number to FILE")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    floor = floor_initrd()
    try:
        results, home = measure(args.runs, floor, args.variants)
    except BenchError as e:
        raise SystemExit(f"create_running: {e}") from None
    shown = [os.path.relpath(sys.executable, ROOT), "bench/create_running.py", "--runs", str(args.runs)]
    if args.variants != VARIANTS:
        shown += ["--variants", ",".join(args.variants)]
    text, summary_numbers = report(results, args.runs, shown)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "kindling_home": str(home), "variants": {
            v: {"create_argv": create_argv(v, "NAME", floor), "per_run": results[v]} for v in results},
            **summary_numbers}, indent=2))


if __name__ == "__main__":
    main()
