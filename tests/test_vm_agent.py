"""The agent in real VMs under TCG, over virtio-serial (issue 5 acceptance), and its gRPC
front end (hypeman's GuestService) on the guest's --grpc port (issue 18)."""

import hashlib
import json
import os
import subprocess
from pathlib import Path

import grpc
import pytest

from tests.test_agent_grpc import method, run_exec

from tests.vm import KINDLING, ROOT, kindling_run, require_qemu

pytestmark = pytest.mark.vm


def kindling(home, *args, timeout=180, stdin=subprocess.DEVNULL):
    env = dict(os.environ, KINDLING_HOME=str(home), KINDLING_ACCEL="tcg")
    return subprocess.run([*KINDLING, *args], cwd=ROOT, env=env, capture_output=True,
                          timeout=timeout, stdin=stdin)


def ok(result):
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode(errors="replace")


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    """One instance for the agent tests; `create` returns while it is Initializing."""
    require_qemu()
    home = tmp_path_factory.mktemp("home")
    ok(kindling(home, "create", "--name", "ag", "--grpc", "--", "sleep", "3600"))
    # Right after create a TCG guest is still booting: exec is refused, with what to do.
    # A fast (KVM) guest may be Running by the time exec looks: then exec just works.
    early = kindling(home, "exec", "ag", "--", "true")
    if early.returncode != 0:
        assert b"instance ag is Initializing; try `kindling wait ag --for running`" \
            in early.stderr, early.stderr
    else:
        assert early.stderr == b"" and early.stdout == b""
    ok(kindling(home, "wait", "ag", "--for", "running", "--timeout", "150"))
    yield home
    kindling(home, "delete", "ag")


def test_running_only_after_agent_ready(vm):
    info = json.loads(ok(kindling(vm, "inspect", "ag", "--json")))
    assert info["state"] == "Running" and info["agent_skipped"] is False
    assert {"HYPEMAN-AGENT-READY", "HYPEMAN-PROGRAM-START"} <= set(info["markers"])
    running_at = next(h["at"] for h in info["history"] if h["state"] == "Running")
    assert running_at >= info["markers"]["HYPEMAN-AGENT-READY"]["seen_at"]


def test_exec_uname_and_exit_code(vm):
    assert ok(kindling(vm, "exec", "ag", "--", "uname", "-r")).strip().endswith("-cloud-amd64")
    r = kindling(vm, "exec", "--env", "X=42", "--workdir", "/tmp", "ag", "--", "sh", "-c",
                 'echo "$X $(pwd)"; echo err >&2; exit 5')
    assert r.returncode == 5
    assert r.stdout == b"42 /tmp\n" and r.stderr == b"err\n"


def test_exec_stdin_and_timeout(vm):
    data = b"x" * 100000
    env = dict(os.environ, KINDLING_HOME=str(vm))
    r = subprocess.run([*KINDLING, "exec", "-i", "ag", "--", "wc", "-c"], cwd=ROOT, env=env,
                       input=data, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == b"100000"
    r = kindling(vm, "exec", "--timeout", "1", "ag", "--", "sleep", "30")
    assert r.returncode == 124


def test_copy_64_mib_in_and_out(vm, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(64 << 20))
    ok(kindling(vm, "cp", str(src), "ag:/tmp/big.bin", timeout=300))
    guest_sum = ok(kindling(vm, "exec", "ag", "--", "sha256sum", "/tmp/big.bin")).split()[0]
    back = tmp_path / "back.bin"
    ok(kindling(vm, "cp", "ag:/tmp/big.bin", str(back), timeout=300))
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    assert guest_sum == want
    assert hashlib.sha256(back.read_bytes()).hexdigest() == want


def test_copy_tree_with_modes_and_symlink_and_stat(vm, tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(tree / "run.sh", 0o750)
    (tree / "sub" / "data").write_text("data")
    os.chmod(tree / "sub" / "data", 0o640)
    os.symlink("sub/data", tree / "link")
    ok(kindling(vm, "cp", str(tree), "ag:/tmp/tree"))
    out = ok(kindling(vm, "exec", "ag", "--", "sh", "-c",
                      "stat -c '%n %a' /tmp/tree/run.sh /tmp/tree/sub/data; readlink /tmp/tree/link;"
                      " /tmp/tree/run.sh"))
    assert out.splitlines() == ["/tmp/tree/run.sh 750", "/tmp/tree/sub/data 640", "sub/data", "hi"]
    st = json.loads(ok(kindling(vm, "stat", "ag:/tmp/tree/link", "--json")))
    assert st["type"] == "symlink" and st["target"] == "sub/data"
    st = json.loads(ok(kindling(vm, "stat", "ag:/tmp/tree/sub/data", "--json")))
    assert st["type"] == "file" and st["size"] == 4 and st["mode"] == oct(0o640)
    missing = kindling(vm, "stat", "ag:/no/such", "--json")
    assert missing.returncode == 1 and json.loads(missing.stdout)["exists"] is False
    back = tmp_path / "back"
    ok(kindling(vm, "cp", "ag:/tmp/tree", str(back)))
    assert os.readlink(back / "link") == "sub/data"
    assert (back / "sub" / "data").read_text() == "data"
    assert os.stat(back / "run.sh").st_mode & 0o777 == 0o750
    # an agent error is named as the user wrote the copy, in both directions
    r = kindling(vm, "cp", "ag:/no/such", str(tmp_path / "x"))
    assert r.returncode == 125 and f"cp ag:/no/such {tmp_path / 'x'}: ".encode() in r.stderr, r.stderr
    r = kindling(vm, "cp", str(tree / "run.sh"), "ag:/no/such/dir/f")
    assert r.returncode == 125 and f"cp {tree / 'run.sh'} ag:/no/such/dir/f: ".encode() in r.stderr, r.stderr


def test_agent_that_dies_before_ready_stops_the_boot(tmp_path):
    """The agent process exits after PID 1 released it, before writing the readiness
    byte (fault injected with kindling_agent_fault=exit-before-ready: a real agent
    cannot be made to fail otherwise on purpose).  The program must never run."""
    home = tmp_path / "home"
    ok(kindling(home, "volume", "create", "side", "--size", "16M"))
    r = kindling_run(home, "--kernel-arg", "kindling_agent_fault=exit-before-ready", "--volume", "side:/data",
                     "--", "sh", "-c", "touch /data/ran; echo program-ran")
    assert r.returncode == 125, r.stderr
    assert "program-ran" not in r.stdout
    assert "guest failed in stage agent" in r.stderr
    assert "exited before it was ready" in r.stderr
    listing = subprocess.run(["debugfs", "-R", "ls /", str(home / "volumes" / "side.img")],
                             capture_output=True, text=True, timeout=30).stdout
    assert "ran" not in listing.split()


def rollup_kib(text):
    """The `Name: N kB` fields of a /proc/PID/smaps_rollup."""
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if value.strip().endswith(" kB"):
            fields[name.strip()] = int(value.split()[0])
    return fields


def test_the_agent_shares_pid1s_interpreter_pages(vm):
    """Issue 14: the agent is forked from PID 1 after its imports (initsys/zygote.py), so its
    interpreter's heap -- trio's code objects above all -- is PID 1's pages, shared copy-on-write.
    Read through the agent itself: the shell it runs is its direct child, so $PPID is the agent.
    As its own interpreter (before issue 14) it shared 6.7 of its 25.3 MiB RSS (26 %, the
    interpreter's own pages in the initramfs); forked, 15.0 of 22.9 MiB (66 %)."""
    out = ok(kindling(vm, "exec", "ag", "--", "sh", "-c",
                      'cat /proc/$PPID/comm; echo "ppid $PPID"; cat /proc/$PPID/smaps_rollup'))
    comm, ppid_line, rollup = out.split("\n", 2)
    assert ppid_line != "ppid 1", "the exec'd shell's parent should be the agent, not PID 1"
    kib = rollup_kib(rollup)
    shared = kib["Shared_Clean"] + kib["Shared_Dirty"]
    assert shared >= 0.5 * kib["Rss"], f"the agent shares {shared} of its {kib['Rss']} kB:\n{rollup}"
    # its anonymous memory (the Python heap) too, not just the interpreter's file pages: as its own
    # interpreter Pss_Anon == Anonymous (all private); forked, 0.73 after the tests above ran (its
    # refcount writes copy pages as it works)
    assert kib["Pss_Anon"] <= 0.85 * kib["Anonymous"], rollup
    assert comm == "kindling-agent"


def test_both_front_ends_exec_into_one_guest(vm, tmp_path):
    """Issue 18: the same guest through Kindling's front end (`kindling exec`, virtio-serial) and
    hypeman's gRPC one (grpcio on the --grpc virtio-serial port: vsock is missing here), with
    a copy in through gRPC read back through ours, and the other way."""
    r = kindling(vm, "exec", "ag", "--", "sh", "-c", "echo from-ours > /tmp/ours; uname -r; exit 4")
    assert r.returncode == 4 and r.stdout.decode().strip().endswith("-cloud-amd64")
    data = os.urandom(100_000)
    sock = Path(json.loads(ok(kindling(vm, "inspect", "ag", "--json")))["dir"]) / "grpc.sock"
    with grpc.insecure_channel(f"unix:{sock}") as ch:
        out, err, code = run_exec(ch, {"command": ["sh", "-c", "cat /tmp/ours; uname -r; echo e >&2; exit 6"]})
        assert (code, err) == (6, b"e\n") and out.startswith(b"from-ours\n") and b"-cloud-amd64" in out
        reqs = [{"start": {"path": "/tmp/via-grpc", "mode": 0o640, "size": len(data)}},
                *({"data": data[i:i + 32768]} for i in range(0, len(data), 32768)), {"end": {}}]
        assert method(ch, "CopyToGuest")(iter(reqs), timeout=120) == {"success": True, "bytes_written": len(data)}
        st = method(ch, "StatPath")({"path": "/tmp/via-grpc"}, timeout=60)
        assert (st["is_file"], st["size"], st["mode"]) == (True, len(data), 0o640)
        back = list(method(ch, "CopyFromGuest")({"path": "/tmp/ours"}, timeout=60))
    assert b"".join(m.get("data", b"") for m in back) == b"from-ours\n"
    assert hashlib.sha256(ok_bytes(kindling(vm, "exec", "ag", "--", "cat", "/tmp/via-grpc"))).digest() == \
        hashlib.sha256(data).digest()
    # the gRPC front end's import, after readiness (agent/front_ends.py), as measured in the guest
    ready = ok(kindling(vm, "exec", "ag", "--", "cat", "/run/kindling/grpc.ready"))
    assert ready.startswith("import_ms=") and float(ready.split("=")[1]) > 0, ready
    print(f"gRPC front end import in the guest: {ready.strip()}")


def ok_bytes(result):
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout
