"""The init mode (config.json `init_mode`) and the command a VM runs, without a VM:
host_shim/initmode.py's decision table, and what create/run put into config.json."""

from pathlib import Path

import pytest

from host_shim import cli, initmode, options, prepare
from host_shim.options import checked
from host_shim.api import InstanceInfo
from host_shim.errors import KindlingError
from host_shim.instance import Instance
from host_shim.metadata import Metadata
from initsys import protocol

DEBIAN_INIT = ("/sbin/init",)


@pytest.mark.parametrize("user, image, requested, expected", [
    # auto: the user's command decides ...
    (("sh", "-c", "true"), None, "auto", (("sh", "-c", "true"), "exec")),
    (("/sbin/init",), None, "auto", (("/sbin/init",), "systemd")),
    (("/lib/systemd/systemd", "--log-level=debug"), None, "auto",
     (("/lib/systemd/systemd", "--log-level=debug"), "systemd")),
    (("/usr/lib/systemd/systemd",), None, "auto", (("/usr/lib/systemd/systemd",), "systemd")),
    # ... also over the image's own command ...
    (("cat", "/etc/debian_version"), DEBIAN_INIT, "auto", (("cat", "/etc/debian_version"), "exec")),
    # ... and without one, the image's own command does
    ((), DEBIAN_INIT, "auto", (DEBIAN_INIT, "systemd")),
    ((), ("/bin/app", "--serve"), "auto", (("/bin/app", "--serve"), "exec")),
    ((), None, "auto", ((), "exec")),
    # only argv[0] counts, and only these exact paths
    (("systemd",), None, "auto", (("systemd",), "exec")),
    (("/bin/systemd",), None, "auto", (("/bin/systemd",), "exec")),
    (("sh", "/sbin/init"), None, "auto", (("sh", "/sbin/init"), "exec")),
    # overrides
    ((), DEBIAN_INIT, "exec", (DEBIAN_INIT, "exec")),
    (("/sbin/init",), None, "exec", (("/sbin/init",), "exec")),
    (("/bin/bash",), None, "systemd", (("/bin/bash",), "systemd")),
    (("/sbin/init", "single"), DEBIAN_INIT, "systemd", (("/sbin/init", "single"), "systemd")),
])
def test_choose(user, image, requested, expected):
    assert initmode.choose(user, image, requested) == expected


def test_choose_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="init mode 'runit': expected one of auto, exec, systemd"):
        initmode.choose(("sh",), None, "runit")


def test_the_protocol_knows_the_modes_auto_picks():
    assert set(initmode.INIT_MODES) - {"auto"} == set(protocol.INIT_MODES)


# --- config.json -------------------------------------------------------------------

def config(**options) -> dict:
    opts = prepare.CreateOptions(**options)
    prepare.check_inputs(opts)
    cfg = prepare.make_config(opts)
    protocol.validate_config(cfg)
    return cfg


def test_config_of_a_command_is_exec_mode():
    cfg = config(command=("echo", "hi"))
    assert (cfg["entrypoint"], cfg["cmd"], cfg["init_mode"]) == (["echo"], ["hi"], "exec")


def test_debian_without_a_command_boots_its_init_in_systemd_mode():
    cfg = config(base="debian")
    assert (cfg["entrypoint"], cfg["cmd"], cfg["init_mode"]) == (["/sbin/init"], [], "systemd")


def test_debian_with_a_command_is_exec_mode():
    cfg = config(base="debian", command=("cat", "/etc/debian_version"))
    assert (cfg["entrypoint"], cfg["cmd"], cfg["init_mode"]) == (
        ["cat"], ["/etc/debian_version"], "exec")


def test_debian_init_in_exec_mode_when_asked():
    cfg = config(base="debian", init_mode="exec")
    assert (cfg["entrypoint"], cfg["init_mode"]) == (["/sbin/init"], "exec")


def test_systemd_mode_when_asked_for_any_rootfs(tmp_path):
    cfg = config(rootfs=tmp_path, command=("/sbin/myinit", "--x"), init_mode="systemd")
    assert (cfg["entrypoint"], cfg["cmd"], cfg["init_mode"]) == (["/sbin/myinit"], ["--x"],
                                                                 "systemd")


def test_an_init_of_the_users_rootfs_is_systemd_mode(tmp_path):
    assert config(rootfs=tmp_path, command=("/sbin/init",))["init_mode"] == "systemd"


@pytest.mark.parametrize("options, message", [
    ({}, "no command given"),
    ({"base": "busybox"}, "no command given"),
    ({"init_mode": "systemd"}, "no command given"),
    ({"base": "debian", "rootfs": Path("/")},
     "--base debian and --rootfs / cannot be used together"),
    ({"base": "busybox", "rootfs": Path("/"), "command": ("true",)},
     "--base busybox and --rootfs / cannot be used together"),
    ({"base": "alpine", "command": ("true",)}, "--base 'alpine': expected one of busybox, debian"),
    ({"init_mode": "runit", "command": ("true",)},
     "--init-mode 'runit': expected one of auto, exec, systemd"),
    ({"config_json": Path("/"), "init_mode": "exec"},
     "--config-json replaces the generated config.json: give no command, --env, --workdir, "
     "--entrypoint, --user or --init-mode"),
    ({"config_json": Path("/"), "user": "app"},
     "--config-json replaces the generated config.json: give no command"),
    ({"image": "x:1", "base": "debian"}, "--image x:1 and --base cannot be used together"),
])
def test_check_inputs_errors(options, message):
    with pytest.raises(KindlingError) as info:
        prepare.check_inputs(checked(prepare.CreateOptions(**options)))
    assert message in info.value.message


def test_no_command_hint_names_the_debian_base():
    with pytest.raises(KindlingError) as info:
        prepare.check_inputs(prepare.CreateOptions())
    assert "--base debian" in info.value.hint


# --- the CLI -----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "create"])
def test_base_and_rootfs_together_is_an_error_naming_both(command, home, capsys):
    assert cli.main([command, "--base", "debian", "--rootfs", "/", "--", "true"]) == 125
    err = capsys.readouterr().err
    assert "kindling: error: --base debian and --rootfs / cannot be used together" in err
    assert not (home / "instances").exists() or list((home / "instances").iterdir()) == []


@pytest.mark.parametrize("command", ["run", "create"])
def test_help_describes_base_and_init_mode(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--base busybox|debian" in out and "its own command is /sbin/init" in out
    assert "--init-mode auto|exec|systemd" in out
    assert "/sbin/init, /lib/systemd/systemd, /usr/lib/systemd/systemd" in out


@pytest.mark.parametrize("args", [["run", "--init-mode", "runit", "--", "x"],
                                  ["create", "--base", "alpine", "--", "x"]])
def test_bad_choices_exit_125(args, capsys):
    assert cli.main(args) == 125
    assert "expected one of" in capsys.readouterr().err


def test_create_options_carry_base_and_init_mode():
    args = cli.build_parser().parse_args(["create", "--base", "debian", "--init-mode", "exec"])
    opts = options.from_args(options.CreateOptions, args, None)
    assert (opts.base, opts.init_mode, opts.command) == ("debian", "exec", ())


# --- what inspect shows ------------------------------------------------------------

@pytest.mark.parametrize("config, shown", [({"entrypoint": ["/sbin/init"], "init_mode": "systemd"},
                                            "systemd"),
                                           ({"entrypoint": ["sh"]}, "exec"),
                                           ("{raw test hook", None)])
def test_instance_info_shows_the_init_mode(tmp_path, config, shown):
    meta = Metadata(id="0123456789ab", name="web", created_at=0, command=["/sbin/init"],
                    config=config, agent_skipped=False, argv=[], accel="tcg",
                    log_max_bytes=1 << 20, log_keep=3)
    info = InstanceInfo.of(Instance("0123456789ab", tmp_path), meta)
    assert info.init_mode == shown and info.to_json()["init_mode"] == shown
