"""`kindling` CLI: user errors, and `kindling run` supervising a fake QEMU.

The fake QEMU (FAKE_QEMU below) is a small Python program installed on PATH as
qemu-system-x86_64.  It finds the console log and the QMP socket in its argv
the way QEMU does, serves QMP `quit`, and plays a scenario: console lines,
sleeps, an exit status, or hanging forever.  The image builder is replaced by
stubs, so these tests need neither a kernel nor image_build.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from host_shim import cli, runner
from host_shim.qemu import Disk
from initsys import protocol

ROOT = Path(__file__).resolve().parent.parent

FAKE_QEMU = r'''
import json, os, signal, socket, sys, threading, time

argv = sys.argv[1:]

def values(flag):
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]

def chardev(kind):
    for spec in values("-chardev"):
        parts = [p.replace("\0", ",") for p in spec.replace(",,", "\0").split(",")]
        if parts[0] == kind:
            return dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    raise SystemExit(f"fake qemu: no -chardev {kind}")

scenario = json.loads(os.environ["FAKE_QEMU_SCENARIO"])
state_dir = os.environ["FAKE_QEMU_STATE"]
with open(os.path.join(state_dir, "argv.json"), "w") as f:
    json.dump(argv, f)
with open(os.path.join(state_dir, "pid"), "w") as f:
    f.write(str(os.getpid()))
if scenario.get("ignore_sigterm"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

def serve_qmp(path):
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    while True:
        conn, _ = server.accept()
        conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
        for line in conn.makefile("rb"):
            command = json.loads(line)["execute"]
            with open(os.path.join(state_dir, "qmp.log"), "a") as f:
                f.write(command + "\n")
            conn.sendall(b'{"return": {}}\r\n')
            if command == "quit":
                os._exit(0)

if scenario.get("qmp", True):
    threading.Thread(target=serve_qmp, args=(chardev("socket")["path"],), daemon=True).start()

log = open(chardev("file")["path"], "ab", buffering=0)
for action in scenario["actions"]:
    kind, arg = action[0], action[1] if len(action) > 1 else None
    if kind == "line":
        log.write(arg.encode() + b"\r\n")
    elif kind == "raw":
        log.write(arg.encode())
    elif kind == "stderr":
        print(arg, file=sys.stderr, flush=True)
    elif kind == "sleep":
        time.sleep(arg)
    elif kind == "exit":
        os._exit(arg)
    elif kind == "hang":
        while True:
            time.sleep(1)
os._exit(0)
'''

START = protocol.program_start_line("exec")
KERNEL_STAGE = protocol.stage_line("kernel", 0.0, 0.9)
INIT_STAGE = protocol.stage_line("init", 0.9, 1.2)


@pytest.fixture
def fake_vm(tmp_path, monkeypatch):
    """Fake QEMU on PATH, stub images, a short KINDLING_HOME; returns a helper."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "qemu-system-x86_64"
    fake.write_text(f"#!{sys.executable}\n{FAKE_QEMU}")
    fake.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    # Short: the QMP socket path must fit in sun_path.
    home = Path(tempfile.mkdtemp(prefix="kh-"))
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("KINDLING_HOME", str(home))
    monkeypatch.setenv("FAKE_QEMU_STATE", str(state))
    monkeypatch.delenv("KINDLING_ACCEL", raising=False)

    images = tmp_path / "images"
    images.mkdir()
    for name in ("vmlinuz", "initrd", "rootfs.img"):
        (images / name).write_bytes(b"")

    class Artifacts:
        kernel, initrd, rootfs = images / "vmlinuz", images / "initrd", images / "rootfs.img"
        kernel_release = "6.1.0-test"

    made = {}

    def make_disks(instance, artifacts, config, opts):
        made["config"] = config
        made["instance"] = instance
        return (Disk(str(artifacts.rootfs), "rootfs", readonly=True),
                Disk(str(instance.overlay_img), "overlay", scratch=True),
                Disk(str(opts.config_disk or instance.config_img), "config", readonly=True))

    monkeypatch.setattr(runner, "build_artifacts", lambda opts, out_dir: Artifacts)
    monkeypatch.setattr(runner, "make_disks", make_disks)

    class FakeVM:
        home_dir = home
        state_dir = state
        disks = made

        def scenario(self, actions, **options):
            monkeypatch.setenv("FAKE_QEMU_SCENARIO", json.dumps({"actions": actions, **options}))

        def argv(self):
            return json.loads((state / "argv.json").read_text())

        def pid(self):
            return int((state / "pid").read_text())

        def qmp_log(self):
            path = state / "qmp.log"
            return path.read_text().split() if path.exists() else []

        def instances(self):
            d = home / "instances"
            return sorted(d.iterdir()) if d.exists() else []

    yield FakeVM()
    shutil.rmtree(home, ignore_errors=True)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def kindling(*args) -> int:
    return cli.main(["run", "--accel", "tcg", *args])


# --- user errors -------------------------------------------------------------

def test_nonexistent_rootfs_named(capsys):
    assert cli.main(["run", "--rootfs", "/nonexistent", "--", "true"]) == 125
    err = capsys.readouterr().err
    assert "kindling: error: --rootfs: /nonexistent does not exist" in err
    assert "Traceback" not in err


def test_qemu_not_installed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cli.main(["run", "--rootfs", str(tmp_path), "--accel", "tcg", "--", "true"]) == 125
    err = capsys.readouterr().err
    assert "kindling: error: QEMU not installed: apt-get install qemu-system-x86" in err


@pytest.mark.parametrize("args, message", [
    (["--env", "NOVALUE", "--", "true"], "invalid --env 'NOVALUE'"),
    (["--env", "=x", "--", "true"], "invalid --env '=x'"),
    (["--accel", "hvf", "--", "true"], "unknown accelerator 'hvf'"),
    ([], "no command given"),
    (["--"], "no command given"),
    (["--workdir", "relative", "--", "true"], "config.json field 'workdir'"),
    (["--kernel", "/nonexistent/vmlinuz", "--", "true"], "--kernel: /nonexistent/vmlinuz"),
    (["--modules", "/", "--", "true"], "--modules needs --kernel"),
    (["--config-json", "/", "--", "true"], "--config-json replaces the generated config.json"),
    (["--config-disk", "/", "--env", "A=1"], "--config-disk replaces the generated config.json"),
    (["--config-json", "/", "--config-disk", "/"], "cannot be used together"),
    (["--config-json", "/"], "--config-json: cannot read /: Is a directory"),
])
def test_run_usage_errors(args, message, capsys, fake_vm):
    assert cli.main(["run", *args]) == 125
    assert message in capsys.readouterr().err


def test_bad_accel_from_environment(monkeypatch, capsys, fake_vm):
    monkeypatch.setenv("KINDLING_ACCEL", "nope")
    assert cli.main(["run", "--", "true"]) == 125
    assert "unknown accelerator 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["run", "--memory", "0", "--", "x"],
                                  ["run", "--timeout", "-1", "--", "x"], ["frobnicate"], []])
def test_argparse_errors_exit_2(args, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    assert info.value.code == 2


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "run" in out and "build" in out


def test_run_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = capsys.readouterr().out
    for option in ("--rootfs", "--kernel", "--modules", "--memory", "--cpus", "--env",
                   "--workdir", "--accel", "--timeout", "--keep", "--verbose"):
        assert option in out
    assert "--config-json" not in out       # test hooks stay hidden


def test_build_dispatches_to_image_builder(monkeypatch, capsys):
    seen = {}

    class Builder:
        @staticmethod
        def add_arguments(parser):
            parser.add_argument("--out")

        @staticmethod
        def main_from_args(args):
            seen["out"] = args.out
            return 3

    monkeypatch.setattr(cli, "_image_build_cli", lambda: Builder)
    assert cli.main(["build", "--out", "/x"]) == 3
    assert seen == {"out": "/x"}


def test_build_without_image_builder_cli(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_image_build_cli", lambda: None)
    assert cli.main(["build"]) == 125
    assert "`kindling build` is not available" in capsys.readouterr().err


def test_real_image_builder_cli_is_found():
    builder = cli._image_build_cli()
    if builder is None:
        pytest.skip("image_build has no CLI yet")
    assert callable(builder.add_arguments) and callable(builder.main_from_args)


def test_console_script_error_has_no_traceback():
    kindling_bin = Path(sys.executable).parent / "kindling"
    if not kindling_bin.exists():
        pytest.skip("console script not installed")
    result = subprocess.run([kindling_bin, "run", "--rootfs", "/nonexistent", "--", "true"],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result.returncode == 125
    assert result.stderr.startswith("kindling: error: --rootfs: /nonexistent does not exist")
    assert "Traceback" not in result.stderr


def test_debug_shows_traceback(capsys):
    assert cli.main(["--debug", "run", "--rootfs", "/nonexistent", "--", "true"]) == 125
    assert "Traceback" in capsys.readouterr().err


# --- run with a fake QEMU ----------------------------------------------------

def test_program_output_and_exit_code(fake_vm, capsys):
    fake_vm.scenario([
        ["line", "[    0.000000] Linux version 6.1"], ["line", KERNEL_STAGE],
        ["line", INIT_STAGE], ["line", START], ["line", "hello"], ["line", ""],
        ["raw", "no newline"], ["line", protocol.exit_line(7, "exit code 7")],
        ["line", "reboot: Power down"], ["exit", 0],
    ])
    assert kindling("--env", "A=b", "--workdir", "/srv", "--", "prog", "arg 1") == 7
    out, err = capsys.readouterr()
    assert out == "hello\n\nno newline\n"
    assert "Linux version" not in err           # kernel lines only with --verbose
    assert "HYPEMAN" not in out + err and "KINDLING-STAGE" not in out + err
    lines = err.splitlines()
    assert lines[0].startswith("kindling: Initializing (0.")
    assert any(l.startswith("kindling: Running (") for l in lines)
    assert any(l.startswith('kindling: exited code=7 "exit code 7" (') for l in lines)
    assert "boot timeline (guest clock, s):" in lines
    assert any(l.split()[:1] == ["kernel"] for l in lines)
    for event in ("launch", "first console byte", "PROGRAM-START seen", "EXIT seen",
                  "QEMU exited"):
        assert any(l.strip().startswith(event) for l in lines), event
    assert fake_vm.disks["config"] == {
        "entrypoint": ["prog"], "cmd": ["arg 1"], "env": {"A": "b"}, "workdir": "/srv",
        "skip_guest_agent": True, "skip_kernel_headers": True,
    }
    assert fake_vm.instances() == []            # removed after the run


def test_argv_given_to_qemu(fake_vm):
    fake_vm.scenario([["line", protocol.exit_line(0, "success")]])
    assert kindling("--memory", "768", "--cpus", "2", "--", "true") == 0
    argv = fake_vm.argv()
    assert argv[argv.index("-m") + 1] == "768"
    assert argv[argv.index("-smp") + 1] == "2"
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-cpu") + 1] == "max"
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert [d.rsplit("serial=", 1)[1] for d in drives] == ["rootfs", "overlay", "config"]


def test_verbose_shows_boot_lines_on_stderr(fake_vm, capsys):
    fake_vm.scenario([["line", "[    0.1] Linux version 6.1"], ["line", START],
                      ["line", "out"], ["line", protocol.exit_line(0, "success")],
                      ["line", "reboot: Power down"]])
    assert kindling("--verbose", "--", "true") == 0
    out, err = capsys.readouterr()
    assert out == "out\n"
    assert "[    0.1] Linux version 6.1" in err and "reboot: Power down" in err
    assert "running: " in err and "-nodefaults" in err


def test_fatal_exits_125_with_stage(fake_vm, capsys):
    fake_vm.scenario([["line", KERNEL_STAGE],
                      ["line", protocol.fatal_line("config", 'open /dev/vdc: "no such device"')],
                      ["exit", 0]])
    assert kindling("--", "true") == 125
    err = capsys.readouterr().err
    assert ('kindling: error: guest failed in stage config: open /dev/vdc: "no such device"'
            in err.splitlines())
    assert "kindling: Running" not in err


def test_qemu_exit_without_exit_marker(fake_vm, capsys):
    fake_vm.scenario([["line", "Kernel panic - not syncing: Attempted to kill init!"],
                      ["stderr", "qemu-system-x86_64: something broke"], ["exit", 1]])
    assert kindling("--", "true") == 125
    err = capsys.readouterr().err
    assert "kindling: error: the VM ended before the program finished (QEMU exited with status 1)" in err
    assert "Kernel panic - not syncing" in err         # last console lines
    assert "qemu-system-x86_64: something broke" in err  # QEMU's stderr (vmm.log)


def test_timeout_stops_qemu_via_qmp(fake_vm, capsys):
    fake_vm.scenario([["line", START], ["line", "working"], ["hang"]])
    started = time.monotonic()
    assert kindling("--timeout", "1", "--", "sleep", "1000") == 125
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert "kindling: error: timed out after 1 s" in err
    assert "working" in err
    assert fake_vm.qmp_log() == ["qmp_capabilities", "quit"]
    assert not alive(fake_vm.pid())


def test_timeout_escalates_to_sigkill(fake_vm, monkeypatch, capsys):
    monkeypatch.setattr(runner, "TERM_GRACE", 0.3)
    fake_vm.scenario([["hang"]], qmp=False, ignore_sigterm=True)
    assert kindling("--timeout", "0.5", "--", "true") == 125
    assert "timed out" in capsys.readouterr().err
    assert not alive(fake_vm.pid())


def test_guest_that_does_not_power_off_is_stopped(fake_vm, monkeypatch, capsys):
    monkeypatch.setattr(runner, "POWEROFF_GRACE", 0.2)
    fake_vm.scenario([["line", START], ["line", protocol.exit_line(3, "exit code 3")], ["hang"]])
    assert kindling("--", "true") == 3
    assert fake_vm.qmp_log() == ["qmp_capabilities", "quit"]
    assert not alive(fake_vm.pid())


def test_keep_keeps_instance_dir(fake_vm, capsys):
    fake_vm.scenario([["line", START], ["line", "x"], ["stderr", "vmm says hi"],
                      ["line", protocol.exit_line(0, "success")]])
    assert kindling("--keep", "--", "true") == 0
    (instance,) = fake_vm.instances()
    assert f"kindling: instance kept: {instance}" in capsys.readouterr().err
    assert "HYPEMAN-EXIT" in (instance / "logs" / "app.log").read_text()
    assert "vmm says hi" in (instance / "logs" / "vmm.log").read_text()


def test_config_json_hook_passes_raw_bytes(fake_vm, tmp_path):
    raw = tmp_path / "config.json"
    raw.write_bytes(b'{"entrypoint": 42')
    fake_vm.scenario([["line", protocol.exit_line(0, "success")]])
    assert kindling("--config-json", str(raw)) == 0
    assert fake_vm.disks["config"] == b'{"entrypoint": 42'


def test_config_disk_hook(fake_vm, tmp_path):
    disk = tmp_path / "garbage.img"
    disk.write_bytes(b"\0" * 4096)
    fake_vm.scenario([["line", protocol.exit_line(0, "success")]])
    assert kindling("--config-disk", str(disk)) == 0
    argv = fake_vm.argv()
    assert f"file={disk},if=none,id=disk2,format=raw,readonly=on" in argv


# --- signals: the shim in its own process ------------------------------------

SHIM = r'''
import sys
from pathlib import Path
from host_shim import cli, runner
from host_shim.qemu import Disk
images = Path(sys.argv[1])
class Artifacts:
    kernel, initrd, rootfs = images / "vmlinuz", images / "initrd", images / "rootfs.img"
runner.build_artifacts = lambda opts, out_dir: Artifacts
runner.make_disks = lambda instance, artifacts, config, opts: (
    Disk(str(artifacts.rootfs), "rootfs", readonly=True),)
sys.exit(cli.main(sys.argv[2:]))
'''


def test_closed_stdout_does_not_stop_the_run(fake_vm, tmp_path):
    fake_vm.scenario([["line", START], ["line", "line 0"], ["sleep", 0.5]]
                     + [["line", f"line {i}"] for i in range(1, 2000)]
                     + [["line", protocol.exit_line(5, "exit code 5")]])
    shim = subprocess.Popen(
        [sys.executable, "-c", SHIM, str(tmp_path / "images"), "run", "--accel", "tcg", "--",
         "seq"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=ROOT)
    assert shim.stdout.readline() == b"line 0\n"
    shim.stdout.close()
    err = shim.stderr.read().decode()
    assert shim.wait(timeout=20) == 5, err
    assert 'kindling: exited code=5 "exit code 5"' in err
    assert "Traceback" not in err and "BrokenPipe" not in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("qmp", [True, False])
def test_signal_stops_qemu(fake_vm, tmp_path, signum, qmp):
    fake_vm.scenario([["line", START], ["line", "running"], ["hang"]], qmp=qmp)
    images = tmp_path / "images"
    shim = subprocess.Popen(
        [sys.executable, "-c", SHIM, str(images), "run", "--accel", "tcg", "--", "sleep", "inf"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        line = ""
        while "kindling: Running" not in line:
            line = shim.stderr.readline()
            assert line, "shim ended before Running"
            assert time.monotonic() < deadline
        qemu_pid = fake_vm.pid()
        assert alive(qemu_pid)
        shim.send_signal(signum)
        out, err = shim.communicate(timeout=20)
    finally:
        if shim.poll() is None:
            shim.kill()
            shim.wait()
    assert shim.returncode == 128 + signum
    assert f"kindling: error: interrupted by {signal.Signals(signum).name}" in err
    assert out == "running\n"
    assert not alive(qemu_pid)
    assert fake_vm.instances() == []
