"""The `kindling` CLI without booting a VM: usage errors, help, exit codes, `build`.

Everything a VM can show (output, exit codes, FATAL, timeouts, signals, the
config hooks) is tested against real VMs in tests/test_host_shim_vm.py and
tests/test_host_shim_lifecycle_vm.py.  The errors here all happen before QEMU
would start, so none needs one.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from host_shim import cli

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("run", "create", "start", "stop", "delete", "list", "inspect", "logs", "wait",
            "analyze", "build")


@pytest.fixture(autouse=True)
def _private_home(home):
    """Every test here gets its own KINDLING_HOME (tests/conftest.py)."""
    return home


# --- user errors -------------------------------------------------------------

def test_nonexistent_rootfs_named(capsys):
    assert cli.main(["run", "--rootfs", "/nonexistent", "--", "true"]) == 125
    err = capsys.readouterr().err
    assert "kindling: error: --rootfs: /nonexistent does not exist" in err
    assert "Traceback" not in err


def test_qemu_not_installed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))       # a PATH without QEMU on it
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
    (["--name=-bad", "--", "true"], "invalid instance name '-bad'"),
    (["--name", "a b", "--", "true"], "invalid instance name 'a b'"),
    (["--log-max-size", "100", "--", "true"], "--log-max-size 100: at least 4096 bytes"),
    (["--initrd", "/nonexistent/initrd.img", "--", "true"], "--initrd: /nonexistent/initrd.img does not exist"),
    (["--initrd", "/", "--", "true"], "--initrd: / is not a regular file"),
])
@pytest.mark.parametrize("command", ["run", "create"])
def test_create_and_run_usage_errors(command, args, message, capsys, home):
    assert cli.main([command, *args]) == 125
    assert message in capsys.readouterr().err
    assert not (home / "instances").exists() or list((home / "instances").iterdir()) == []


def test_bad_accel_from_environment(monkeypatch, capsys):
    monkeypatch.setenv("KINDLING_ACCEL", "nope")
    assert cli.main(["run", "--", "true"]) == 125
    assert "unknown accelerator 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["stop", "nosuch"], ["start", "nosuch"], ["delete", "nosuch"],
                                  ["inspect", "nosuch"], ["logs", "nosuch"], ["analyze", "nosuch"],
                                  ["wait", "nosuch", "--for", "running"], ["rm", "nosuch"]])
def test_unknown_instance_exits_125(args, capsys, home):
    assert cli.main(args) == 125
    err = capsys.readouterr().err
    assert err.startswith("kindling: error: no such instance: nosuch\n")
    assert f"`kindling list` shows the instances in {home / 'instances'}" in err


def test_list_of_nothing(capsys):
    assert cli.main(["list"]) == 0
    assert capsys.readouterr().out.split() == ["ID", "NAME", "STATE", "TO", "RUNNING",
                                               "CREATED", "COMMAND"]
    assert cli.main(["ps", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.parametrize("args", [
    ["frobnicate"], [], ["wait", "vm"], ["wait", "vm", "--for", "paused"],
    ["logs", "vm", "--source", "kernel"], ["stop", "vm", "--time", "-2"], ["stop"],
    ["volume"], ["volume", "create", "v"], ["list", "--nope"],
])
def test_usage_errors_exit_125(args, capsys):
    """argparse's usage errors exit 125 like every other error of Kindling (not 2)."""
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    assert info.value.code == 125
    assert "kindling: error: " in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--memory", "0", "--", "x"], "--memory '0': must be more than 0"),
    (["--memory", "lots", "--", "x"], "--memory 'lots': expected a size such as 512M or 1G"),
    (["--memory", "32", "--", "x"], "--memory 32: at least 64M is needed"),
    (["--memory", "32M", "--", "x"], "--memory 32M: at least 64M is needed"),
    (["--cpus", "0", "--", "x"], "--cpus 0: at least 1 is needed"),
    (["--cpus", "two", "--", "x"], "--cpus 'two': expected a whole number"),
    (["--timeout", "-1", "--", "x"], "--timeout -1: must be positive"),
    (["--log-max-size", "lots", "--", "x"], "--log-max-size 'lots': expected a size"),
    (["--log-files", "0", "--", "x"], "--log-files 0: at least 1 is needed"),
    (["--agent", "carrier-pigeon", "--", "x"], "--agent 'carrier-pigeon': expected one of serial"),
    (["--init-mode", "upstart", "--", "x"], "--init-mode 'upstart': expected one of auto, exec"),
    (["--base", "arch", "--", "x"], "--base 'arch': expected one of busybox, debian"),
])
def test_bad_option_values_are_named_and_exit_125(args, message, capsys, home):
    assert cli.main(["run", *args]) == 125
    err = capsys.readouterr().err
    assert f"kindling: error: {message}" in err, err
    assert "Traceback" not in err


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS + ("exec", "cp", "stat", "volume create",
                                                "volume list", "volume rm"))
def test_every_command_takes_json(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([*command.split(), "--help"])
    assert "--json" in capsys.readouterr().out


def test_run_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = capsys.readouterr().out
    for option in ("--rootfs", "--kernel", "--modules", "--memory", "--cpus", "--env",
                   "--workdir", "--accel", "--timeout", "--keep", "--verbose", "--name",
                   "--log-max-size", "--log-files"):
        assert option in out
    assert "--config-json" not in out       # test hooks stay hidden


def test_build_uses_the_image_builder(tmp_path, capsys):
    """The real builder and the shared cache (~0.1 s when warm)."""
    assert cli.main(["build", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    for name in ("kernel", "initrd", "rootfs"):
        assert any(line.startswith(name) for line in out.splitlines()), out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "initrd.img", "kernel", "rootfs.img"]
    assert all((tmp_path / "out" / name).stat().st_size > 0
               for name in ("initrd.img", "kernel", "rootfs.img"))


def test_console_script_error_has_no_traceback():
    kindling_bin = Path(sys.executable).parent / "kindling"
    assert kindling_bin.exists(), "the kindling console script is missing: pip install -e ."
    result = subprocess.run([kindling_bin, "run", "--rootfs", "/nonexistent", "--", "true"],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result.returncode == 125
    assert result.stderr.startswith("kindling: error: --rootfs: /nonexistent does not exist")
    assert "Traceback" not in result.stderr


def test_debug_shows_traceback(capsys):
    assert cli.main(["--debug", "run", "--rootfs", "/nonexistent", "--", "true"]) == 125
    assert "Traceback" in capsys.readouterr().err


def test_kindling_error_inside_a_nursery_is_reported_plainly():
    from host_shim.errors import KindlingError, kindling_error_in
    error = KindlingError("boom")
    group = BaseExceptionGroup("nursery", [BaseExceptionGroup("inner", [error])])
    assert kindling_error_in(group) is error
    assert kindling_error_in(BaseExceptionGroup("x", [error, ValueError()])) is None
