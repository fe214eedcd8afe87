"""Footprint benchmark (issue 7, benchmark 3): the initrd's size, the memory of
PID 1 and the agent in a running guest, and the import time of each guest
component under the guest's own runtime.

  initrd    compressed and uncompressed, the kernel-headers segment apart, and what
            dominates (by group: interpreter, shared libraries, extension modules,
            stdlib bytecode, third-party packages, kernel modules; and the largest files)
  memory    a default guest (agent on virtio-serial, `sleep`), once Running:
            /proc/1/smaps_rollup and the agent's, read through `kindling exec`; PSS and
            RSS of each and their sum, median over --runs boots; and PSS by mapping
            (heap, anonymous, python3.11, each library) so what dominates is visible
  imports   a TCG guest whose root is the initrd's own tree (the same interpreter,
            bytecode and libraries) runs each component's imports in a fresh
            `python3.11 -IS -X importtime` process: PID 1, the agent, the network
            helper, the headers worker.  Cumulative ms per top-level import, median
            over --runs (after one warm-up pass, so the page cache is warm as the
            initramfs is).  Measured on an idle guest: during a real boot PID 1 and
            the agent import side by side on the two vCPUs
            (`--kernel-arg kindling_importtime=1` shows PID 1's profile there).

    .venv/bin/python bench/footprint.py [--runs 3] [--json FILE] [--skip memory,imports]
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.shim import SLEEPER, Shim  # noqa: E402
from tests import newc  # noqa: E402  (the independent newc reader of the tests)

MiB = 2**20
TOP_FILES = 15

# ---------------------------------------------------------------------------
# initrd


def group_of(name):
    """The contributor group of an initrd path."""
    parts = name.split("/")
    if name == "usr/bin/python3.11":
        return "interpreter (python3.11)"
    if name.startswith("usr/lib/x86_64-linux-gnu/"):
        return f"shared library {parts[-1]}"
    if name.startswith("usr/lib/python3.11/lib-dynload/"):
        return "stdlib extension modules (lib-dynload)"
    if name.startswith("usr/lib/python3.11/"):
        return f"stdlib {parts[3].removesuffix('.pyc')}" if len(parts) > 4 else "stdlib (top-level modules)"
    if name.startswith("usr/lib/kindling/headers/"):
        return "kernel headers tarball"
    if name.startswith("usr/lib/kindling/"):
        return f"package {parts[3]}" if len(parts) > 4 else "usr/lib/kindling (files)"
    if name.startswith("usr/lib/modules/"):
        return "kernel modules"
    return "other"


def initrd_footprint(path, info):
    raw = Path(path).read_bytes()
    plain, rest = newc.split_initrd(raw)
    main = newc.read_newc(newc.decompress(rest))
    files = [e for e in main if e["mode"] & 0o170000 == 0o100000]
    groups = {}
    for e in files:
        g = group_of(e["name"])
        groups[g] = groups.get(g, 0) + e["size"]
    folded = {}  # groups below 100 KiB each folded into one line, so the table stays short
    for g, size in groups.items():
        key = g if size >= 100 * 1024 else "others (groups below 100 KiB each)"
        folded[key] = folded.get(key, 0) + size
    headers_segment = len(raw) - len(rest)
    return {
        "file_bytes": len(raw),
        "headers_segment_bytes": headers_segment,
        "main_compressed_bytes": len(rest),
        "main_uncompressed_bytes": info.get("uncompressed_size"),
        "main_file_bytes": sum(e["size"] for e in files),
        "compression": info.get("compression"),
        "files": len(files),
        "groups": dict(sorted(folded.items(), key=lambda kv: -kv[1])),
        "largest_files": [(e["name"], e["size"]) for e in sorted(files, key=lambda e: -e["size"])[:TOP_FILES]],
        "plain_segments": len(plain),
        "main_entries": main,
    }


def print_initrd(fp):
    print("\ninitrd")
    rows = [("whole file (headers segment + compressed main)", fp["file_bytes"]),
            ("  headers segment (plain cpio, tarball already gz)", fp["headers_segment_bytes"]),
            (f"  main archive, {fp['compression']}", fp["main_compressed_bytes"]),
            ("main archive uncompressed (the boot runtime)", fp["main_uncompressed_bytes"]),
            ("uncompressed incl. headers segment", fp["main_uncompressed_bytes"] + fp["headers_segment_bytes"])]
    for label, n in rows:
        print(f"  {label:52} {n / MiB:8.2f} MiB")
    print(f"\n  what the main archive holds ({fp['files']} files, {fp['main_file_bytes'] / MiB:.2f} MiB of file data):")
    for g, n in fp["groups"].items():
        print(f"    {g:48} {n / MiB:7.2f} MiB {100 * n / fp['main_file_bytes']:5.1f} %")
    print("\n  largest files:")
    for name, n in fp["largest_files"]:
        print(f"    {name:72} {n / MiB:6.2f} MiB")


# ---------------------------------------------------------------------------
# memory of PID 1 and the agent

# Finds the agent: forked from PID 1, by the name it sets (initsys/agent_gate.PROCESS_NAME, in
# /proc/PID/comm); started as its own interpreter (before issue 14), by its command line
# (`-c ... agent_boot ...`).  The brackets keep this script's own command line from matching.
FIND_AGENT = ("grep -lx 'kindling-agen[t]' /proc/[0-9]*/comm;"
              " grep -l 'agent_[b]oot' /proc/[0-9]*/cmdline; true")


def parse_rollup(text):
    """kB fields of a smaps_rollup, in bytes."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields = value.split()
        if len(fields) == 2 and fields[1] == "kB":
            out[key.strip()] = int(fields[0]) * 1024
    return out


def pss_by_mapping(smaps):
    """PSS per mapping name of a /proc/<pid>/smaps ([heap], [anon], file basenames)."""
    totals, current = {}, "[anon]"
    for line in smaps.splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            current = head[5].rsplit("/", 1)[-1] if len(head) > 5 else "[anon]"
        elif line.startswith("Pss:"):
            totals[current] = totals.get(current, 0) + int(head[1]) * 1024
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def memory_once(shim, i):
    name = f"fp{i}"
    shim.json("create", "--name", name, "--", *SLEEPER)
    shim.json("wait", name, "--for", "running", "--timeout", "300")
    shim.inspect(name)
    agent_pids = [p.split("/")[2] for p in shim.exec(name, "sh", "-c", FIND_AGENT).split()]
    if len(agent_pids) != 1:
        raise RuntimeError(f"expected one agent process in the guest, found {agent_pids}")
    out = {}
    for who, pid in (("pid1", "1"), ("agent", agent_pids[0])):
        out[who] = parse_rollup(shim.exec(name, "cat", f"/proc/{pid}/smaps_rollup"))
        out[who]["by_mapping"] = pss_by_mapping(shim.exec(name, "cat", f"/proc/{pid}/smaps"))
    shim.run("delete", name)
    shim.created.remove(name)
    return out


def memory(runs):
    samples = []
    with Shim("kb-fp-") as shim:
        for i in range(runs):
            s = memory_once(shim, i)
            samples.append(s)
            print(f"memory run {i + 1}/{runs}: PSS PID 1 {s['pid1']['Pss'] / MiB:.2f} MiB,"
                  f" agent {s['agent']['Pss'] / MiB:.2f} MiB", file=sys.stderr)
    med = lambda who, key: statistics.median(s[who][key] for s in samples)  # noqa: E731
    result = {who: {k: med(who, k) for k in ("Pss", "Rss", "Pss_Anon", "Pss_Shmem")} for who in ("pid1", "agent")}
    result["sum"] = {k: result["pid1"][k] + result["agent"][k] for k in ("Pss", "Rss")}
    result["by_mapping_last_run"] = {who: samples[-1][who]["by_mapping"] for who in ("pid1", "agent")}
    result["samples"] = [{who: {k: v for k, v in s[who].items() if k != "by_mapping"} for who in s} for s in samples]
    return result


def print_memory(mem, runs):
    print(f"\nmemory of a Running default guest (agent on serial, `sleep`), median over {runs} boots, MiB")
    print(f"  {'process':10} {'PSS':>7} {'RSS':>7} {'PSS anon':>9} {'PSS shmem':>9}")
    for who in ("pid1", "agent"):
        m = mem[who]
        print(f"  {who:10} {m['Pss'] / MiB:7.2f} {m['Rss'] / MiB:7.2f} {m['Pss_Anon'] / MiB:9.2f} {m['Pss_Shmem'] / MiB:9.2f}")
    print(f"  {'sum':10} {mem['sum']['Pss'] / MiB:7.2f} {mem['sum']['Rss'] / MiB:7.2f}   (target: PSS <= 25 MiB)")
    for who, maps in mem["by_mapping_last_run"].items():
        top = ", ".join(f"{k} {v / MiB:.2f}" for k, v in list(maps.items())[:8])
        print(f"  {who} PSS by mapping (last run, MiB): {top}")


# ---------------------------------------------------------------------------
# import time of each guest component

COMPONENTS = {
    # as PID 1 imports: initsys.main, the setup thread's modules, then trio and the program stage
    "pid1": "from initsys import main\n"
            "from initsys import agent_gate, config, devices, ports, rootfs, stages, headers_launch, reaper\n"
            "import pyudev\nimport trio\nfrom initsys import program",
    # initsys/agent_boot.py: everything serve() needs, before `go`
    "agent": "from initsys import agent_boot\nimport agent.main\nfrom initsys.helpers import read_all",
    # the agent's gRPC front end, imported after readiness (agent/front_ends.py): its own line
    # is agent.grpc_front (h2, hpack, hyperframe with it), agent.main's is already paid above
    "grpc": "import agent.main\nimport agent.grpc_front",
    # initsys/network.py: pyroute2.iproute.linux under a stub parent
    "network": "from initsys import network\nnetwork.import_iproute()",
    # initsys/headers.py and its lazy imports
    "headers": "from initsys import headers\nimport json, shutil, tarfile, zlib",
}

PROBE = r'''
import json, subprocess, sys, time
components, runs = json.loads(sys.argv[1]), int(sys.argv[2])

def profile(code):
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-IS", "-X", "importtime", "-c",
                        "import sys\nsys.path.insert(0, '/usr/lib/kindling')\n" + code],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - t
    if p.returncode != 0:
        raise SystemExit(f"probe failed: {p.stderr[-2000:]}")
    top = {}
    for line in p.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cum, name = line[len("import time:"):].split("|")
        if not name[1:].startswith(" "):  # level 0: imported by the component's code itself
            top[name.strip()] = int(cum) / 1000
    return {"wall_ms": wall * 1000, "top_ms": top}

for name, code in components.items():  # warm-up: the page cache, as in an initramfs
    profile(code)
out = {name: [profile(code) for _ in range(runs)] for name, code in components.items()}
print("FOOTPRINT-PROBE " + json.dumps(out), flush=True)
'''


def extract_tree(entries, dest):
    """The main archive's files, directories and symlinks (no device nodes) into dest."""
    import os
    for e in entries:
        kind, path = e["mode"] & 0o170000, dest / e["name"]
        if kind == 0o040000:
            path.mkdir(parents=True, exist_ok=True)
        elif kind == 0o100000:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(e["body"])
            os.chmod(path, e["mode"] & 0o7777)
        elif kind == 0o120000:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(e["body"].decode(), path)


def imports(entries, runs):
    with tempfile.TemporaryDirectory(prefix="kindling-fp-root-") as tmp, Shim("kb-fi-") as shim:
        root = Path(tmp) / "root"
        extract_tree(entries, root)
        (root / "probe.py").write_text(PROBE)
        out = shim.run("run", "--rootfs", str(root), "--no-headers", "--agent", "none", "--timeout", "900",
                       "--", "/usr/bin/python3.11", "-IS", "/probe.py", json.dumps(COMPONENTS), str(runs),
                       timeout=1200)
    for line in out.splitlines():
        if "FOOTPRINT-PROBE " in line:
            samples = json.loads(line.split("FOOTPRINT-PROBE ", 1)[1])
            break
    else:
        raise RuntimeError(f"the import probe printed no result:\n{out[-2000:]}")
    result = {}
    for comp, runs_ in samples.items():
        names = list(runs_[0]["top_ms"])
        result[comp] = {
            "wall_ms": statistics.median(r["wall_ms"] for r in runs_),
            "imports_ms": statistics.median(sum(r["top_ms"].values()) for r in runs_),
            "top_ms": {n: statistics.median(r["top_ms"].get(n, 0.0) for r in runs_) for n in names},
        }
    return result


def print_imports(imp, runs):
    print(f"\nimport time under the guest's runtime (TCG), median over {runs} runs, ms")
    for comp, r in imp.items():
        print(f"  {comp}: imports {r['imports_ms']:.0f} ms cumulative"
              f" (process start to exit {r['wall_ms']:.0f} ms)")
        top = sorted(r["top_ms"].items(), key=lambda kv: -kv[1])
        for name, ms in top[:10]:
            if ms >= 1:
                print(f"    {name:36} {ms:7.0f}")


# ---------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="boots for memory, profiles per component (default 3)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: memory, imports")
    args = ap.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    if skip - {"memory", "imports"}:
        ap.error(f"--skip: unknown part(s) {sorted(skip - {'memory', 'imports'})}")

    from image_build.build import BuildOptions, build_all
    with tempfile.TemporaryDirectory(prefix="kindling-fp-") as tmp:
        art = build_all(BuildOptions(out_dir=Path(tmp) / "out"))
        fp = initrd_footprint(art.initrd, art.info["initrd"])
    entries = fp.pop("main_entries")
    print_initrd(fp)
    report = {"runs": args.runs, "initrd": fp}
    if "memory" not in skip:
        report["memory"] = memory(args.runs)
        print_memory(report["memory"], args.runs)
    if "imports" not in skip:
        report["imports"] = imports(entries, args.runs)
        print_imports(report["imports"], args.runs)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
