"""Benchmark (issue 7): Kindling's agent vs Debian's qemu-guest-agent, in one TCG VM.

Boots ONE Debian VM (`--base debian --init-mode exec --qga`, so both agents sit on the
same virtio-serial bus), starts Debian's qemu-ga inside it through our agent
(`qemu-ga -m virtio-serial -p /dev/vportNpM -d`: in exec mode there is no udev to do
it), then measures both, interleaved run by run:

  `true` round trip     ours: one exec through host_shim.agent_client;
                        qemu-ga: guest-exec {"path": "true", "capture-output": true},
                        then guest-exec-status polled without sleeping until `exited`.
                        "connected": one connection kept open (the headline: a real
                        host keeps it); "fresh": connect + hello/guest-sync + the call.
  file copy             ours: copy_to then copy_from; qemu-ga: guest-file-open (w),
                        guest-file-write of base64 chunks, guest-file-close, then
                        open (r) / guest-file-read / close.  sha256 checked in the
                        guest after the write and on the host after the read.

  spawn floor           fork + execvp + waitpid of `true` in a tight loop inside the
                        guest (bench/spawn_floor.c, built static with the host's gcc
                        and copied in): what any agent's `true` costs at the least.

Prints medians (min..max) and the ratios (qga/ours for latency, ours/qga for
throughput); `--json FILE` keeps the raw numbers.  `--qga-sweep 64,1024,...` first
measures qemu-ga's write and read throughput per chunk size (KiB), which is how
the default `--qga-chunk-kib` was picked.  A CI smoke run:

    .venv/bin/python bench/agent_vs_qga.py --runs 1 --copy-runs 1 --copy-mib 8

Figures, not assertions; the machine is shared and noisy.  The VM is always deleted.
"""

import argparse
import base64
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from bench.agent_serial import sha256  # noqa: E402
from host_shim import lifecycle, prepare  # noqa: E402
from host_shim.agent_client import open_agent  # noqa: E402
from host_shim.state import State  # noqa: E402

BOOT_TIMEOUT = 300.0
CALL_TIMEOUT = 120.0        # one agent or qemu-ga call (a 48 MiB chunk under TCG is slow)
QGA_START_TIMEOUT = 30.0
# qemu-ga's limits (QEMU 7.2): guest-file-read count <= 48 MiB; a request is one JSON
# token stream whose string token must stay under 64 MiB, i.e. < 48 MiB of data in base64.
QGA_MAX_CHUNK = 48 << 20
DEFAULT_QGA_CHUNK_KIB = 1024    # fastest both ways in `--qga-sweep 64,1024,4096` (8 MiB)
GUEST_OURS, GUEST_QGA = "/tmp/kbench-ours.bin", "/tmp/kbench-qga.bin"
GUEST_FLOOR = "/tmp/kbench-spawn-floor"
FLOOR_SOURCE = ROOT / "bench" / "spawn_floor.c"
FLOOR_SPAWNS = 200          # spawns per floor measurement (--floor-spawns)


class QgaError(Exception):
    pass


class Qga:
    """A minimal client of qemu-guest-agent's JSON protocol on its virtio-serial socket.

    On virtio-serial the stream outlives clients, so a client first sends 0xFF (qemu-ga
    resets its parser) and guest-sync-delimited with a fresh id, then skips everything
    up to the 0xFF that prefixes the answer carrying that id.
    """

    _ids = itertools.count(int(time.time()) & 0xFFFFFF)

    def __init__(self, stream):
        self.stream = stream
        self.buffer = bytearray()

    async def _line(self) -> bytes:
        start = 0
        while (end := self.buffer.find(b"\n", start)) < 0:
            start = len(self.buffer)
            data = await self.stream.receive_some(1 << 20)
            if not data:
                raise QgaError("qemu-ga closed the connection")
            self.buffer += data
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 1]
        return line

    async def _send(self, execute: str, arguments: dict | None = None, prefix: bytes = b"") -> None:
        request = {"execute": execute} | ({"arguments": arguments} if arguments else {})
        await self.stream.send_all(prefix + json.dumps(request).encode())

    async def sync(self, attempt_timeout: float = 1.0) -> None:
        """guest-sync-delimited until qemu-ga echoes our id (it may still be starting)."""
        while True:
            sync_id = next(self._ids)
            await self._send("guest-sync-delimited", {"id": sync_id}, prefix=b"\xff")
            with trio.move_on_after(attempt_timeout):
                while True:
                    line = await self._line()
                    marker = line.rfind(b"\xff")
                    if marker < 0:
                        continue
                    try:
                        if json.loads(line[marker + 1:]).get("return") == sync_id:
                            return
                    except ValueError:
                        continue

    async def call(self, execute: str, **arguments):
        with trio.fail_after(CALL_TIMEOUT):
            await self._send(execute, arguments)
            while not (line := (await self._line()).strip(b"\xff \r")):
                pass
        reply = json.loads(line)
        if "error" in reply:
            raise QgaError(f"{execute}: {reply['error'].get('desc', reply['error'])}")
        return reply["return"]


@contextlib.asynccontextmanager
async def open_qga(path: Path, timeout: float):
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_unix_socket(os.fspath(path))
            qga = Qga(stream)
            await qga.sync()
    except trio.TooSlowError:
        raise SystemExit(f"qemu-ga did not answer guest-sync-delimited on {path} within {timeout:g} s") from None
    try:
        yield qga
    finally:
        await trio.aclose_forcefully(stream)


# --- the guest ---------------------------------------------------------------------------

async def guest_out(agent, argv: list[str]) -> str:
    with trio.fail_after(CALL_TIMEOUT):
        r = await agent.exec(argv)
    if r.code != 0:
        raise SystemExit(f"{' '.join(argv)} failed in the guest ({r.code}): {r.stderr.decode(errors='replace')}")
    return r.stdout.decode()


async def start_qga(agent) -> str:
    """Find the port named org.qemu.guest_agent.0 and start qemu-ga on it, daemonized
    (its own session, so it outlives the exec)."""
    for port in (await guest_out(agent, ["ls", "/sys/class/virtio-ports"])).split():
        name = await guest_out(agent, ["cat", f"/sys/class/virtio-ports/{port}/name"])
        if name.strip() == prepare.QGA_PORT_NAME:
            break
    else:
        raise SystemExit(f"no virtio-serial port named {prepare.QGA_PORT_NAME} in the guest")
    await guest_out(agent, ["qemu-ga", "--method=virtio-serial", f"--path=/dev/{port}", "--daemonize",
                            "--pidfile=/run/kbench-qga.pid", "--logfile=/tmp/kbench-qga.log"])
    return f"/dev/{port}"


async def guest_sha256(agent, path: str) -> str:
    return (await guest_out(agent, ["sha256sum", path])).split()[0]


# --- one measurement each ------------------------------------------------------------------

async def ours_true(agent) -> float:
    t = time.perf_counter()
    with trio.fail_after(CALL_TIMEOUT):
        r = await agent.exec(["true"])
    elapsed = time.perf_counter() - t
    assert r.code == 0, r
    return elapsed


async def qga_true(qga) -> tuple[float, int]:
    """(seconds, guest-exec-status calls) for `true` until qemu-ga reports it exited."""
    t = time.perf_counter()
    pid = (await qga.call("guest-exec", **{"path": "true", "capture-output": True}))["pid"]
    polls = 0
    while True:
        polls += 1
        status = await qga.call("guest-exec-status", pid=pid)
        if status["exited"]:
            break
    elapsed = time.perf_counter() - t
    if status.get("exitcode") != 0:
        raise SystemExit(f"qemu-ga: true exited with {status}")
    return elapsed, polls


async def ours_copy(agent, src: Path, back: Path, digest: str) -> tuple[float, float]:
    t = time.perf_counter()
    with trio.fail_after(CALL_TIMEOUT * 4):
        await agent.copy_to(src, GUEST_OURS)
    t_in = time.perf_counter() - t
    check(await guest_sha256(agent, GUEST_OURS), digest, "ours, in the guest")
    back.unlink(missing_ok=True)
    t = time.perf_counter()
    with trio.fail_after(CALL_TIMEOUT * 4):
        await agent.copy_from(GUEST_OURS, back)
    t_out = time.perf_counter() - t
    check(sha256(back), digest, "ours, back on the host")
    await guest_out(agent, ["rm", "-f", GUEST_OURS])
    return t_in, t_out


async def qga_copy(qga, agent, data: bytes, chunk: int, digest: str) -> tuple[float, float]:
    t = time.perf_counter()
    handle = await qga.call("guest-file-open", path=GUEST_QGA, mode="w")
    for off in range(0, len(data), chunk):
        piece = data[off:off + chunk]
        written = await qga.call("guest-file-write", handle=handle,
                                 **{"buf-b64": base64.b64encode(piece).decode("ascii")})
        if written["count"] != len(piece):
            raise SystemExit(f"qemu-ga: short write {written['count']} of {len(piece)}")
    await qga.call("guest-file-close", handle=handle)
    t_in = time.perf_counter() - t
    check(await guest_sha256(agent, GUEST_QGA), digest, "qemu-ga, in the guest")
    t = time.perf_counter()
    handle = await qga.call("guest-file-open", path=GUEST_QGA, mode="r")
    h = hashlib.sha256()
    while True:
        got = await qga.call("guest-file-read", handle=handle, count=chunk)
        h.update(base64.b64decode(got["buf-b64"]))
        if got["eof"]:
            break
    await qga.call("guest-file-close", handle=handle)
    t_out = time.perf_counter() - t
    check(h.hexdigest(), digest, "qemu-ga, back on the host")
    await guest_out(agent, ["rm", "-f", GUEST_QGA])
    return t_in, t_out


def build_floor(work: Path) -> Path:
    """bench/spawn_floor.c, static (the guest's root may lack the host's libc version)."""
    binary = work / "spawn_floor"
    try:
        subprocess.run(["gcc", "-static", "-O2", "-o", str(binary), str(FLOOR_SOURCE)],
                       check=True, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SystemExit("gcc not found: the spawn floor is built on the host (apt-get install gcc)") from None
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"building {FLOOR_SOURCE} failed: {e.stderr}") from None
    return binary


async def floor_true(agent, runs: int, spawns: int) -> list[float]:
    """Seconds per fork+exec+wait of `true` in the guest, one figure per run of `spawns`."""
    per_spawn = []
    for _ in range(runs):
        out = await guest_out(agent, [GUEST_FLOOR, str(spawns)])
        per_spawn.append(float(out) / 1e6)
    return per_spawn


def check(got: str, want: str, where: str) -> None:
    if got != want:
        raise SystemExit(f"sha256 mismatch ({where}): {got} != {want}")


# --- the run -------------------------------------------------------------------------------

def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "raw": values}


async def fresh_trues(runs: int, agent_sock, qga_sock) -> dict:
    """`true` on a fresh connection: both agents reconnect every time."""
    ours, theirs = [], []
    for _ in range(runs):
        t = time.perf_counter()
        async with open_agent(agent_sock, timeout=30) as agent:
            await ours_true(agent)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        async with open_qga(qga_sock, QGA_START_TIMEOUT) as qga:
            await qga_true(qga)
        theirs.append(time.perf_counter() - t)
    return {"ours": stats(ours), "qga": stats(theirs)}


async def measure(args, instance, work: Path) -> dict:
    agent_sock, qga_sock = instance.agent_socket, instance.qga_socket
    src, back = work / "in.bin", work / "back.bin"
    with open(src, "wb") as f:
        for _ in range(args.copy_mib):
            f.write(os.urandom(1 << 20))
    data, digest = src.read_bytes(), sha256(src)
    size_mib = len(data) / (1 << 20)
    chunk = args.qga_chunk_kib << 10
    r = {"runs": args.runs, "copy_runs": args.copy_runs, "copy_mib": args.copy_mib,
         "qga_chunk_kib": args.qga_chunk_kib}

    async with open_agent(agent_sock, timeout=30) as agent:
        await agent.copy_to(build_floor(work), GUEST_FLOOR)
        r["qga_port"] = await start_qga(agent)
        async with open_qga(qga_sock, QGA_START_TIMEOUT) as qga:
            r["qga_version"] = (await qga.call("guest-info"))["version"]
            await ours_true(agent), await qga_true(qga)          # warm both (page cache, imports)
            ours, theirs, polls = [], [], []
            for i in range(args.runs):                            # interleaved, order alternating
                if i % 2:
                    ours.append(await ours_true(agent))
                for_qga = await qga_true(qga)
                theirs.append(for_qga[0])
                polls.append(for_qga[1])
                if not i % 2:
                    ours.append(await ours_true(agent))
            r["true_connected"] = {"ours": stats(ours), "qga": stats(theirs), "qga_status_polls": polls}
            r["spawn_floor"] = stats(await floor_true(agent, max(3, args.runs // 5), args.floor_spawns))

            if args.qga_sweep:
                r["qga_sweep"] = {}
                for kib in args.qga_sweep:
                    t_in, t_out = await qga_copy(qga, agent, data, kib << 10, digest)
                    r["qga_sweep"][kib] = {"in_mib_s": size_mib / t_in, "out_mib_s": size_mib / t_out}
                    print(f"qemu-ga chunk {kib:6d} KiB: write {size_mib / t_in:6.2f} MiB/s, "
                          f"read {size_mib / t_out:6.2f} MiB/s", flush=True)

            copies = {"ours": {"in": [], "out": [], "both": []}, "qga": {"in": [], "out": [], "both": []}}
            for i in range(args.copy_runs):
                for who in (("ours", "qga") if i % 2 == 0 else ("qga", "ours")):
                    if who == "ours":
                        t_in, t_out = await ours_copy(agent, src, back, digest)
                    else:
                        t_in, t_out = await qga_copy(qga, agent, data, chunk, digest)
                    copies[who]["in"].append(size_mib / t_in)
                    copies[who]["out"].append(size_mib / t_out)
                    copies[who]["both"].append(2 * size_mib / (t_in + t_out))
            r["copy_mib_s"] = {who: {d: stats(v) for d, v in c.items()} for who, c in copies.items()}

    r["true_fresh"] = await fresh_trues(args.runs, agent_sock, qga_sock)
    back.unlink(missing_ok=True)
    return r


def table(r: dict) -> str:
    def cell(s, scale):
        return f"{s['median'] * scale:8.2f} ({s['min'] * scale:.2f}..{s['max'] * scale:.2f})"

    rows = [f"{'':38} {'ours':>24} {'qemu-ga':>24} {'ratio':>8}"]
    for key, label in (("true_connected", "`true` round trip, connected (ms)"),
                       ("true_fresh", "`true` round trip, fresh conn. (ms)")):
        o, q = r[key]["ours"], r[key]["qga"]
        rows.append(f"{label:38} {cell(o, 1000):>24} {cell(q, 1000):>24} "
                    f"{q['median'] / o['median']:7.1f}x")
    for d, label in (("in", "into the guest"), ("out", "out of the guest"), ("both", "write + read")):
        o, q = r["copy_mib_s"]["ours"][d], r["copy_mib_s"]["qga"][d]
        name = f"{r['copy_mib']} MiB {label} (MiB/s)"
        rows.append(f"{name:38} {cell(o, 1):>24} {cell(q, 1):>24} "
                    f"{o['median'] / q['median']:7.1f}x")
    floor, ours = r["spawn_floor"], r["true_connected"]["ours"]
    rows.append(f"{'spawn floor: C fork+exec+wait (ms)':38} {cell(floor, 1000):>24} {'':>24} "
                f"{ours['median'] / floor['median']:7.1f}x  (ours/floor, target <= 1.5x)")
    polls = statistics.median(r["true_connected"]["qga_status_polls"])
    rows.append(f"latency ratio = qemu-ga/ours (target >= 3x); throughput ratio = ours/qemu-ga "
                f"(target >= 5x)\nqemu-ga {r['qga_version']} on {r['qga_port']}, chunk "
                f"{r['qga_chunk_kib']} KiB, median {polls:g} guest-exec-status calls per `true`")
    return "\n".join(rows)


async def run(args) -> dict:
    home = Path(tempfile.mkdtemp(prefix="kbq-", dir="/tmp"))    # short: sockets live in it
    work = Path(tempfile.mkdtemp(prefix="kbq-work-", dir="/tmp"))
    instance = None
    try:
        # No kernel headers: their first install (20-35 s of guest CPU) would compete with both agents.
        opts = prepare.CreateOptions(command=("sleep", "100000"), base="debian", init_mode="exec",
                                     qga=True, headers=False, accel=args.accel, memory=args.memory)
        t = time.monotonic()
        instance, _ = await lifecycle.create(opts, home)
        await lifecycle.wait(instance, State.RUNNING, timeout=BOOT_TIMEOUT)
        print(f"Debian VM Running {time.monotonic() - t:.1f} s after create ({args.accel})", flush=True)
        result = await measure(args, instance, work)
    finally:
        with trio.CancelScope(shield=True):
            if instance is not None:
                with trio.move_on_after(60):
                    await lifecycle.delete(instance)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=30, help="`true` round trips per agent and kind")
    p.add_argument("--copy-runs", type=int, default=3, help="file copies per agent")
    p.add_argument("--copy-mib", type=int, default=64, help="size of the copied file")
    p.add_argument("--qga-chunk-kib", type=int, default=DEFAULT_QGA_CHUNK_KIB,
                   help="bytes per guest-file-write/-read (default: %(default)s KiB, the fastest "
                        "measured with --qga-sweep)")
    p.add_argument("--qga-sweep", type=lambda s: [int(x) for x in s.split(",")], default=[],
                   metavar="KIB,...", help="first measure qemu-ga's copy at these chunk sizes")
    p.add_argument("--floor-spawns", type=int, default=FLOOR_SPAWNS,
                   help="fork+exec+wait of `true` per spawn-floor run (%(default)s)")
    p.add_argument("--memory", type=int, default=1024, help="guest MiB")
    p.add_argument("--accel", default="tcg", choices=("tcg", "kvm", "auto"))
    p.add_argument("--json", type=Path, metavar="FILE", help="write the raw numbers here")
    args = p.parse_args()
    if min(args.runs, args.copy_runs, args.copy_mib, args.floor_spawns) < 1:
        p.error("--runs, --copy-runs, --copy-mib and --floor-spawns must be at least 1")
    for kib in [args.qga_chunk_kib, *args.qga_sweep]:
        if not 1 <= kib << 10 <= QGA_MAX_CHUNK:
            p.error(f"qemu-ga chunk {kib} KiB: 1 KiB .. {QGA_MAX_CHUNK >> 10} KiB")
    result = trio.run(run, args)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
