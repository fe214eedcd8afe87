"""API scale benchmark (issue 17): N instances created through `kindling serve` at once.

One `kindling serve` on a private KINDLING_HOME (TCG).  N clients each send
POST /instances (image kindling/busybox, cmd `sleep 3600`) at the same moment, then
GET /instances/{id}/wait?state=Running (again while it times out) -- all over raw HTTP,
one thread per client.  Reported:

  all Running            wall time from the first POST until every wait said Running
  create answered        when the slowest POST /instances returned
  time to Running        each instance's own (inspect's time_to_running), median/max
  server CPU per VM      user+sys of the server process (its worker threads included)
                         from before the first POST until all Running, divided by N
  server RSS per VM      (peak RSS - RSS before the first POST) / N, VmHWM/VmRSS
                         of /proc/<pid>/status

Every instance is deleted at the end, also on failure; the server is stopped.

    .venv/bin/python bench/api_scale.py [--vms 16] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.shim import proc_cpu_s  # noqa: E402
from tests.serve_fixture import KindlingServer  # noqa: E402

TOKEN = "bench-token"
WAIT_ROUNDS = 6            # 6 x 300 s at most for one instance to be Running


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def one_client(server: KindlingServer, name: str, t0: float, out: dict) -> None:
    """POST /instances, then wait for Running; `out[name]` gets the times or the error."""
    try:
        status, _, body = server.request("POST", "/instances", token=TOKEN, timeout=900,
                                         body={"image": "kindling/busybox", "name": name,
                                               "cmd": ["sleep", "3600"],
                                               "skip_kernel_headers": True})
        if status != 201:
            raise RuntimeError(f"create {name}: {status} {body}")
        created = time.monotonic() - t0
        for _ in range(WAIT_ROUNDS):
            status, _, waited = server.request(
                "GET", f"/instances/{name}/wait?state=Running&timeout=300s", token=TOKEN,
                timeout=400)
            if status != 200:
                raise RuntimeError(f"wait {name}: {status} {waited}")
            if not waited["timed_out"]:
                break
        if waited["state"] != "Running":
            raise RuntimeError(f"{name} is {waited['state']}: {waited.get('state_error')}")
        out[name] = {"created_s": created, "running_s": time.monotonic() - t0}
    except Exception as e:        # reported by the main thread
        out[name] = {"error": f"{type(e).__name__}: {e}"}


def run(server: KindlingServer, n: int) -> dict:
    pid = server.proc.pid
    names = [f"api{i}" for i in range(n)]
    out: dict = {}
    rss0, cpu0 = status_kib(pid, "VmRSS"), proc_cpu_s(pid)
    t0 = time.monotonic()
    clients = [threading.Thread(target=one_client, args=(server, name, t0, out)) for name in names]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    all_running = time.monotonic() - t0
    cpu = proc_cpu_s(pid) - cpu0
    peak = status_kib(pid, "VmHWM")
    failed = {k: v["error"] for k, v in out.items() if "error" in v}
    if failed:
        raise RuntimeError(f"{len(failed)} of {n} failed: {failed}")
    from host_shim.api import Kindling    # hypeman's Instance has no time to Running
    k = Kindling(server.home)
    ttr = {name: k.inspect(name).time_to_running for name in names}
    return {"vms": n, "all_running_s": all_running,
            "create_answered_s": max(v["created_s"] for v in out.values()),
            "time_to_running_s": ttr, "server_cpu_s": cpu, "server_cpu_per_vm_s": cpu / n,
            "server_rss_before_kib": rss0, "server_rss_peak_kib": peak,
            "server_rss_per_vm_kib": (peak - rss0) / n}


def delete_all(server: KindlingServer) -> None:
    status, _, listed = server.request("GET", "/instances", token=TOKEN)
    for info in listed if status == 200 else ():
        server.request("DELETE", f"/instances/{info['id']}", token=TOKEN, timeout=300)


def report(res: dict) -> None:
    ttr = list(res["time_to_running_s"].values())
    rows = [("first POST -> all Running (wall)", f"{res['all_running_s']:.2f} s"),
            ("slowest POST /instances answered", f"{res['create_answered_s']:.2f} s"),
            ("time to Running, median instance", f"{statistics.median(ttr):.2f} s"),
            ("time to Running, slowest instance", f"{max(ttr):.2f} s"),
            ("server CPU (user+sys), total", f"{res['server_cpu_s']:.2f} s"),
            ("server CPU per VM", f"{res['server_cpu_per_vm_s']:.3f} s"),
            ("server RSS before / peak", f"{res['server_rss_before_kib'] / 1024:.1f} / "
                                         f"{res['server_rss_peak_kib'] / 1024:.1f} MiB"),
            ("server RSS per VM", f"{res['server_rss_per_vm_kib']:.0f} KiB")]
    print(f"\napi scale benchmark: {res['vms']} instances created at once through kindling serve, TCG")
    for label, value in rows:
        print(f"  {label:40} {value}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vms", type=int, default=16, help="instances created at once (default 16)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    if args.vms < 1:
        ap.error("--vms must be at least 1")
    with tempfile.TemporaryDirectory(prefix="kb-api-", dir="/tmp") as home:
        with KindlingServer(Path(home), token=TOKEN) as server:
            try:
                res = run(server, args.vms)
            finally:
                delete_all(server)
    report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
