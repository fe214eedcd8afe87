"""Instances in real VMs under QEMU/TCG: create, wait, stop, start, delete, logs, analyze.

Every test drives the real `kindling` CLI in subprocesses (or the Python API) with a
private KINDLING_HOME, the shared image build cache and `KINDLING_ACCEL=tcg` (nested
KVM here is unusable).  A boot takes ~5 s under TCG on 2 cores; eight at once take
longer, so waits are generous.  Nothing is faked.
"""

import json
import os
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from host_shim import Kindling, NotRunning, State
from initsys import protocol

from tests.vm import (KINDLING, ROOT, env_for, eventually, kindling, kindling_json,
                      never_ready_args, private_home, qemu_pids_using)

pytestmark = pytest.mark.vm

BOOT_TIMEOUT = 300          # a single boot is ~5 s; this is for a loaded CI machine
SLEEPER = ["sh", "-c", "echo started; sleep 1000"]
# ignores the SIGTERM PID 1 forwards on an ACPI power-button press (sleep inherits SIG_IGN)
TERM_IGNORING_SLEEPER = ["sh", "-c", "trap '' TERM; echo started; sleep 1000"]


@pytest.fixture
def home():
    with private_home("kl-") as path:
        yield path


def state_history(info: dict) -> list[tuple[str, bool]]:
    return [(h["state"], h["inferred"]) for h in info["history"]]


def test_create_wait_stop_start_delete(home, tmp_path):
    started = time.monotonic()
    created = kindling_json(home, "create", "--name", "web", "--memory", "384M", "--",
                            *TERM_IGNORING_SLEEPER)
    create_took = time.monotonic() - started
    assert created["name"] == "web" and len(created["id"]) == 12
    assert created["options"]["memory"] == 384 and created["options"]["name"] == "web"
    # create does not scan the log (it observes with scan=False), so it reports
    # Initializing however fast the guest is: no PROGRAM-START yet
    assert created["state"] == "Initializing", created
    assert created["markers"] == {} and created["time_to_running"] is None
    assert [s for s, _ in state_history(created)] == ["Stopped", "Created", "Initializing"]
    info = check_running(home, "web", create_took)
    check_list_logs_and_analyze(home, info, tmp_path)
    check_stop_quits_a_program_that_ignores_the_power_button(home, "web")
    check_restart_is_a_new_boot(home, "web", info["markers"][protocol.PROGRAM_START])
    # delete while Running: QEMU gone, directory gone
    kindling(home, "delete", "web")
    assert qemu_pids_using(home) == []
    assert list((home / "instances").iterdir()) == []
    assert kindling_json(home, "list") == []


def check_running(home, name: str, create_took: float) -> dict:
    waited = kindling_json(home, "wait", name, "--for", "running", "--timeout", "240")
    assert waited["state"] == "Running"
    info = kindling_json(home, "inspect", name)
    start = info["markers"][protocol.PROGRAM_START]
    assert protocol.parse_ts(start["ts"]) is not None and start["fields"]["mode"] == "exec"
    assert 0 < info["time_to_running"] < BOOT_TIMEOUT
    assert info["time_to_running"] > create_took - 1      # Running was seen by the wait
    events = [e["name"] for e in info["timeline"]["host"]]
    for event in ("requested", "launch", "VMM ready", "guest started", "PROGRAM-START seen",
                  "Running"):
        assert event in events
    # PID 1 prints the program-start stage line just after the program started, so it may
    # follow the Running markers by a moment; analyze rescans the whole boot
    eventually(lambda: {s["name"] for s in kindling_json(home, "analyze", name)["timeline"]["stages"]}
               >= {"kernel", "program-start"}, "the program-start stage line", timeout=30)
    # wait again: already Running, returns at once; the id prefix works as a reference
    quick = time.monotonic()
    kindling(home, "wait", info["id"][:5], "--for", "running")
    assert time.monotonic() - quick < 10
    return info


def check_list_logs_and_analyze(home, info: dict, tmp_path) -> None:
    name = info["name"]
    listed = kindling_json(home, "list")
    assert [(i["name"], i["state"]) for i in listed] == [(name, "Running")]
    eventually(lambda: "started" in kindling(home, "logs", name).stdout.splitlines(),
               "the program's output in `kindling logs`")
    logs = kindling(home, "logs", name).stdout
    assert "HYPEMAN" not in logs and "KINDLING-STAGE" not in logs
    # the name is taken
    dup = kindling(home, "create", "--name", name, "--", "true", check=False)
    assert dup.returncode == 125
    assert f"the name '{name}' is already in use by instance {info['id']}" in dup.stderr
    # analyze: text and an SVG chart
    svg = tmp_path / "boot.svg"
    text = kindling(home, "analyze", name, "--svg", str(svg)).stdout
    assert f"time to Running: {info['time_to_running']:.3f} s" in text
    assert "boot timeline (guest clock, s):" in text and "host events" in text
    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    labels = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "kernel" in labels and "Running" in labels and "PROGRAM-START seen" in labels
    events = info["timeline"]["host"]
    assert len(list(root.iter("{http://www.w3.org/2000/svg}rect"))) >= len(events) + 2


def check_stop_quits_a_program_that_ignores_the_power_button(home, name: str) -> None:
    """The guest does handle the ACPI power button (initsys/powerbutton.py: PID 1 forwards
    SIGTERM to the program), but this program ignores SIGTERM, so it never exits and the
    guest never powers off: after its -t 1 grace period kindling quits QEMU."""
    began = time.monotonic()
    stopped = kindling_json(home, "stop", name, "-t", "1")
    assert time.monotonic() - began >= 1                 # the grace period was given
    assert stopped["state"] == "Stopped"
    assert stopped["vmm_exit"].startswith("quit by kindling stop"), stopped["vmm_exit"]
    assert qemu_pids_using(home) == []
    info = kindling_json(home, "inspect", name)
    assert state_history(info)[-3:] == [("Running", False), ("Shutdown", True),
                                        ("Stopped", False)]
    assert kindling(home, "stop", name).returncode == 0          # stopping again: nothing to do


def check_restart_is_a_new_boot(home, name: str, old_start: dict) -> None:
    """The old log (with its PROGRAM-START) is rotated away and older than the new start,
    so the new boot is Initializing until it prints its own."""
    restarted = kindling_json(home, "start", name)
    assert restarted["state"] in ("Created", "Initializing")       # start does not scan
    info = kindling_json(home, "inspect", name)     # scans: a fast guest may be Running
    assert info["boot"] == 2 and info["state"] in ("Initializing", "Running"), info
    if protocol.PROGRAM_START in info["markers"]:   # then it is this boot's, not the old one
        assert protocol.parse_ts(info["markers"][protocol.PROGRAM_START]["ts"]) > \
            protocol.parse_ts(old_start["ts"])
    old_logs = [p for p in (home / "instances" / info["id"] / "logs").iterdir()
                if p.name.startswith("app.log.")]
    assert any(protocol.PROGRAM_START in p.read_text(errors="replace") for p in old_logs)
    again = kindling_json(home, "wait", name, "--for", "running", "--timeout", "240")
    info = kindling_json(home, "inspect", name)
    assert info["boot"] == 2 and again["state"] == "Running"
    assert protocol.parse_ts(info["markers"][protocol.PROGRAM_START]["ts"]) > \
        protocol.parse_ts(old_start["ts"])


def test_stop_during_initializing(home, tmp_path):
    """A guest whose /init never prints a marker stays Initializing (a real one may be
    Running by the time `stop` looks, under KVM)."""
    created = kindling_json(home, "create", *never_ready_args(tmp_path), "--", *SLEEPER)
    assert created["state"] == "Initializing"
    assert kindling_json(home, "inspect", created["id"])["state"] == "Initializing"
    began = time.monotonic()
    stopped = kindling_json(home, "stop", created["id"])        # default -t 10 not used:
    assert time.monotonic() - began < 8                          # nothing to power down yet
    assert stopped["state"] == "Stopped"
    assert qemu_pids_using(home) == []
    info = kindling_json(home, "inspect", created["id"])
    assert [s for s, _ in state_history(info)] == ["Stopped", "Created", "Initializing",
                                                   "Shutdown", "Stopped"]
    assert info["time_to_running"] is None
    kindling(home, "rm", created["id"])
    assert list((home / "instances").iterdir()) == []


def test_delete_during_initializing_removes_everything(home, tmp_path):
    created = kindling_json(home, "create", "--name", "gone", *never_ready_args(tmp_path),
                            "--", *SLEEPER)
    assert created["state"] == "Initializing"
    assert kindling_json(home, "inspect", "gone")["state"] == "Initializing"
    directory = Path(created["dir"])
    assert (directory / "qemu.pid").exists() and (directory / "logs" / "app.log").exists()
    assert qemu_pids_using(home) != []
    deleted = kindling_json(home, "delete", "gone")
    assert deleted["name"] == "gone"
    assert not directory.exists()
    assert qemu_pids_using(home) == []
    assert kindling(home, "inspect", "gone", check=False).returncode == 125


def test_eight_instances_at_once(home):
    """All eight reach Running; their markers and time-to-Running are recorded."""
    n = 8
    creates = [subprocess.Popen([*KINDLING, "create", "--json", "--name", f"vm{i}", "--",
                                 "sh", "-c", f"echo I am {i}; sleep 1000"],
                                cwd=ROOT, env=env_for(home), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(n)]
    waits = []
    for i, p in enumerate(creates):
        out, err = p.communicate(timeout=BOOT_TIMEOUT)
        assert p.returncode == 0, err
        assert json.loads(out)["state"] in ("Created", "Initializing")
        waits.append(subprocess.Popen(
            [*KINDLING, "wait", f"vm{i}", "--for", "running", "--timeout", "600", "--json"],
            cwd=ROOT, env=env_for(home), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    for p in waits:
        out, err = p.communicate(timeout=700)
        assert p.returncode == 0, err
        assert json.loads(out)["state"] == "Running"
    listed = kindling_json(home, "list")
    assert sorted((i["name"], i["state"]) for i in listed) == [
        (f"vm{i}", "Running") for i in range(n)]
    times = {}
    for i in range(n):
        info = kindling_json(home, "inspect", f"vm{i}")
        assert protocol.PROGRAM_START in info["markers"]
        assert info["time_to_running"] is not None and info["time_to_running"] > 0
        times[f"vm{i}"] = info["time_to_running"]
        metadata = json.loads((Path(info["dir"]) / "metadata.json").read_text())
        assert protocol.PROGRAM_START in metadata["markers"]["markers"]
        assert metadata["time_to_running"] == info["time_to_running"]
        eventually(lambda: f"I am {i}" in kindling(home, "logs", f"vm{i}").stdout,
                   f"vm{i}'s output")
    print(f"\ntime to Running of {n} concurrent instances (s): "
          + ", ".join(f"{k}={v:.2f}" for k, v in sorted(times.items())))
    deletes = [subprocess.Popen([*KINDLING, "delete", f"vm{i}"], cwd=ROOT, env=env_for(home),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
               for i in range(n)]
    for p in deletes:
        assert p.wait(timeout=120) == 0
    assert qemu_pids_using(home) == []
    assert list((home / "instances").iterdir()) == []


def test_shim_restarted_mid_boot_rederives_state_from_the_logs(home):
    """`create` is a shim that exits mid-boot, and here a `wait` is killed mid-boot too.
    A fresh process knows nothing but metadata.json and the logs, and must get it right:
    Initializing while the log has no PROGRAM-START, Running once it has."""
    created = kindling_json(home, "create", "--", *SLEEPER)
    ref = created["id"]
    waiter = subprocess.Popen([*KINDLING, "wait", ref, "--for", "running"], cwd=ROOT,
                              env=env_for(home), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    app_log = Path(created["dir"]) / "logs" / "app.log"
    eventually(lambda: waiter.poll() is not None or holds_open(waiter.pid, app_log),
               "the waiter following the log (or done already)", timeout=120)
    waiter.kill()
    waiter.wait()
    deadline = time.monotonic() + 240
    seen = []
    while time.monotonic() < deadline:
        info = kindling_json(home, "inspect", ref)     # a new shim process each time
        seen.append(info["state"])
        if protocol.PROGRAM_START not in app_log.read_text(errors="replace"):
            # the log still lacks it after the look: it cannot have made it Running
            assert info["state"] == "Initializing", info
        if info["state"] == "Running":
            break
        time.sleep(0.3)
    assert seen[-1] == "Running", seen
    metadata = json.loads((Path(created["dir"]) / "metadata.json").read_text())
    assert metadata["state"] == "Running"
    # a fast guest may be Running at the first look, but the record went through Initializing
    assert [h["state"] for h in metadata["history"]] == ["Stopped", "Created", "Initializing",
                                                          "Running"]
    assert protocol.PROGRAM_START in metadata["markers"]["markers"]
    # Hydration: with every log file gone, the persisted markers still say Running.
    for p in app_log.parent.iterdir():
        if p.name.startswith("app.log."):
            p.unlink()
    os.truncate(app_log, 0)
    assert kindling_json(home, "inspect", ref)["state"] == "Running"
    kindling(home, "delete", ref)


def holds_open(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open (e.g. a `kindling wait` following the log)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:
        return False
    return any(os.path.realpath(fd) == str(path.resolve()) for fd in fds)


def test_rotation_under_a_writing_guest_loses_nothing(home):
    """The guest writes numbered lines and stage-marker-shaped lines while the log is
    rotated every second at 8 KiB (keeping 2 copies): `logs -f` sees every line exactly
    once, in order -- the program's marker-shaped lines too: they are its output, not
    PID 1's markers (the control channel vouches for none of them) -- and PID 1's own
    stages are persisted, though the file that held them was since deleted."""
    batches, per_batch = 40, 50
    program = ("i=0; b=0; while [ $b -lt %d ]; do j=0; while [ $j -lt %d ]; do "
               "echo \"line $i\"; i=$((i+1)); j=$((j+1)); done; "
               "echo \"KINDLING-STAGE name=batch$b start=$b.000000 end=$b.500000\"; "
               "b=$((b+1)); usleep 150000; done" % (batches, per_batch))
    created = kindling_json(home, "create", "--log-max-size", "8K", "--log-files", "2", "--",
                            "sh", "-c", program)
    followed = kindling(home, "logs", "-f", created["id"], timeout=600).stdout.splitlines()
    numbers = [int(l.split()[1]) for l in followed if l.startswith("line ")]
    assert numbers == list(range(batches * per_batch))
    forged = [l.split()[1] for l in followed if l.startswith("KINDLING-STAGE ")]
    assert forged == [f"name=batch{b}" for b in range(batches)]
    info = kindling_json(home, "analyze", created["id"])
    stages = {s["name"] for s in info["timeline"]["stages"]}
    assert {"mounts", "modules", "rootfs", "program-start"} <= stages
    assert not {f"batch{b}" for b in range(batches)} & stages
    logs_dir = Path(created["dir"]) / "logs"
    names = sorted(p.name for p in logs_dir.iterdir())
    assert "app.log.1" in names and "app.log.3" not in names, names   # rotated, capped
    assert not any(p.name == "app.log.new" for p in logs_dir.iterdir())
    first = (logs_dir / "app.log.2").read_text(errors="replace") if "app.log.2" in names else ""
    assert "line 0\r\n" not in first      # the oldest output really was rotated away
    kindling(home, "delete", created["id"])


def test_wait_outcomes(home, tmp_path):
    # a guest that fails: `wait --for running` says why, exit 125
    bad = tmp_path / "config.json"
    bad.write_text('{"entrypoint": 42}')
    failing = kindling_json(home, "create", "--config-json", str(bad))
    r = kindling(home, "wait", failing["id"], "--for", "running", check=False)
    assert r.returncode == 125
    assert (f"kindling: error: instance {failing['name']} stopped before it was Running: "
            "guest failed in stage config: config.json field 'entrypoint'") in r.stderr
    # a program that exits 7: `wait --for stopped` prints its exit code, like docker wait
    exiting = kindling_json(home, "create", "--", "sh", "-c", "exit 7")
    r = kindling(home, "wait", exiting["id"], "--for", "stopped", "--timeout", "240")
    assert r.stdout == "7\n"
    info = kindling_json(home, "inspect", exiting["id"])
    assert info["state"] == "Stopped" and info["exit"] == {"code": 7, "message": "exit code 7"}
    # it was Running on the way: waiting for Running afterwards succeeds, with a note
    r = kindling(home, "wait", exiting["id"], "--for", "running")
    assert "was Running, and is now Stopped" in r.stderr
    # a timeout
    sleeper = kindling_json(home, "create", "--", *SLEEPER)
    r = kindling(home, "wait", sleeper["id"], "--for", "stopped", "--timeout", "0.5",
                 check=False)
    assert r.returncode == 125
    assert "timed out after 0.5 s waiting for instance" in r.stderr
    for ref in (failing["id"], exiting["id"], sleeper["id"]):
        kindling(home, "delete", ref)
    assert qemu_pids_using(home) == []


def test_python_api(home):
    k = Kindling(home)
    vm = k.create(["sh", "-c", "echo from the api; sleep 1000"], name="api", accel="tcg")
    assert vm.state is State.INITIALIZING and vm.name == "api"     # create does not scan
    try:                                # the guard for agent operations
        k.require_running("api", "exec")
    except NotRunning as e:             # TCG: still booting
        assert e.message == "instance api is Initializing; try `kindling wait api --for running`"
    else:                               # a fast (KVM) guest may be Running already
        assert k.inspect("api").state is State.RUNNING
    vm = k.wait("api", "running", timeout=240)
    assert vm.state is State.RUNNING and vm.time_to_running > 0
    assert k.require_running("api", "exec").state is State.RUNNING
    eventually(lambda: "from the api" in k.logs("api"), "the program's output")
    assert [i.name for i in k.list()] == ["api"]
    assert k.analyze("api").timeline.stages
    vm = k.stop("api", timeout=0)
    assert vm.state is State.STOPPED
    with pytest.raises(NotRunning, match="start it with `kindling start api`"):
        k.require_running("api")
    k.delete("api")
    assert k.list() == []
    assert qemu_pids_using(home) == []
