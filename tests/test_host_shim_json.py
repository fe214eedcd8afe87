"""Every `kindling` command takes --json, and what it prints about an instance has `id`,
`name` and `state` (an InstanceInfo, host_shim/info.py) -- without a VM.

The instance is a stopped one written on disk as `create` leaves it; create/start/run
(which need QEMU) and cp/stat/exec (which need a Running guest's agent) get that same
instance from a stand-in for the part that would boot or reach the guest.  The real
flows are in tests/test_host_shim_lifecycle_vm.py and tests/test_host_shim_vm.py.
"""

import json
import time
from pathlib import Path

import pytest

from host_shim import agent_ops, cli, lifecycle, metadata, runner
from host_shim.agent_client import CopyResult, StatResult
from host_shim.info import InstanceInfo
from host_shim.instance import Instance
from host_shim.metadata import Metadata
from host_shim.state import State

INSTANCE_KEYS = set(InstanceInfo.__dataclass_fields__)



def stopped_instance(home: Path, name: str = "web", volumes: tuple = ()) -> tuple[Instance, Metadata]:
    """An instance as a finished boot leaves it: Stopped, its log complete."""
    instance = Instance.create(home)
    now = time.time_ns()
    meta = Metadata(id=instance.id, name=name, created_at=now, command=["sh", "-c", "exit 0"],
                    config={"init_mode": "exec"}, agent_skipped=True, argv=["qemu"],
                    accel="tcg", log_max_bytes=1 << 20, log_keep=3, boot=1,
                    boot_requested_at=now, logs_final=True,
                    options={"volumes": [{"image": str(v), "path": "/data", "mode": "rw"}
                                         for v in volumes]})
    meta.record_state(State.STOPPED, at_ns=now)
    metadata.save(instance, meta)
    return instance, meta


def run_json(capsys, *args) -> object:
    """`kindling COMMAND --json ARGS...` (--json before a `-- CMD`)."""
    at = 2 if args[0] == "volume" else 1
    code = cli.main([*args[:at], "--json", *args[at:]])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def assert_instance(obj: dict, meta: Metadata) -> None:
    assert (obj["id"], obj["name"], obj["state"]) == (meta.id, meta.name, "Stopped")
    assert set(obj) >= INSTANCE_KEYS, set(INSTANCE_KEYS) - set(obj)


@pytest.mark.parametrize("args", [["inspect"], ["wait", "--for", "stopped"], ["analyze"],
                                  ["stop"], ["delete"]])
def test_instance_commands_print_the_instance(home, capsys, args):
    _, meta = stopped_instance(home)
    obj = run_json(capsys, args[0], "web", *args[1:])
    assert_instance(obj, meta)


def test_list_prints_instances(home, capsys):
    _, meta = stopped_instance(home)
    (obj,) = run_json(capsys, "list")
    assert_instance(obj, meta)


@pytest.mark.parametrize("command, operation", [("create", "create"), ("start", "start")])
def test_create_and_start_print_the_instance(home, capsys, monkeypatch, command, operation):
    instance, meta = stopped_instance(home)

    async def booted(*args, **kwargs):
        return (instance, meta) if operation == "create" else meta
    monkeypatch.setattr(lifecycle, operation, booted)
    args = ["create", "--", "true"] if command == "create" else ["start", "web"]
    assert_instance(run_json(capsys, *args), meta)


def test_logs_lines_name_the_instance(home, capsys):
    instance, meta = stopped_instance(home)
    instance.app_log.write_text("hello\n")
    assert cli.main(["logs", "web", "--json"]) == 0
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert line == {"id": meta.id, "name": "web", "state": "Stopped", "source": "app",
                    "line": "hello"}


def test_cp_and_stat_name_the_instance(home, capsys, monkeypatch):
    _, meta = stopped_instance(home)

    async def copy(src, dst, home=None):
        return CopyResult(entries=2, bytes=10)

    async def stat(target, home=None):
        return StatResult(exists=True, type="file", mode=0o644, size=10)
    monkeypatch.setattr(agent_ops, "copy", copy)
    monkeypatch.setattr(agent_ops, "stat", stat)
    copied = run_json(capsys, "cp", "./x", "web:/x")
    assert (copied["id"], copied["name"], copied["state"], copied["entries"]) == (
        meta.id, "web", "Stopped", 2)
    st = run_json(capsys, "stat", "web:/x")
    assert (st["id"], st["name"], st["state"], st["type"]) == (meta.id, "web", "Stopped", "file")


def test_exec_prints_events(home, capsys, monkeypatch):
    instance, meta = stopped_instance(home)

    async def exec_command(ref, argv, *, started, stdout, stderr, **kwargs):
        started(instance, meta)
        await stdout(b"out\n")
        await stderr(b"err\xff")
        return 3
    monkeypatch.setattr(agent_ops, "exec_command", exec_command)
    assert cli.main(["exec", "--json", "web", "--", "x"]) == 3
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines == [{"event": "state", "id": meta.id, "name": "web", "state": "Stopped"},
                     {"event": "output", "stream": "stdout", "data": "out\n"},
                     {"event": "output", "stream": "stderr", "data": "err\ufffd"},
                     {"event": "exit", "code": 3}]


def test_run_prints_events(home, capsys, monkeypatch):
    def run(opts, home=None, emit=None):
        emit("state", id="0123", name="x", state="Running", at=1.0)
        emit("output", stream="stdout", data="hi")
        return 7
    monkeypatch.setattr(runner, "run", run)
    assert cli.main(["run", "--json", "--", "echo", "hi"]) == 7
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["event"] for x in lines] == ["state", "output", "exit"]
    assert lines[-1] == {"event": "exit", "code": 7}


def test_volume_commands_print_the_volume(home, capsys):
    created = run_json(capsys, "volume", "create", "data", "--size", "2M")
    assert created == {"name": "data", "path": str(home / "volumes/data.img"), "size": 2 << 20,
                       "used_by": []}
    assert run_json(capsys, "volume", "list") == [created]
    assert run_json(capsys, "volume", "rm", "data") == created
    assert run_json(capsys, "volume", "list") == []


def test_build_prints_what_was_built(tmp_path, capsys):
    """The real builder and the shared cache (~0.1 s when warm)."""
    built = run_json(capsys, "build", "--out", str(tmp_path / "out"))
    for name in ("kernel", "initrd", "rootfs"):
        assert Path(built[name]).is_file() and built[f"{name}_size"] > 0
    assert built["kernel_release"]
