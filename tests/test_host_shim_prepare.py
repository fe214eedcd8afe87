"""host_shim/prepare.py without a VM: the kernel-headers switch of config.json, --initrd, and
the virtio-serial ports of the agent and of qemu-guest-agent (--qga)."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from host_shim import cli, options, prepare, qemu
from host_shim.accel import Accel
from host_shim.errors import KindlingError
from host_shim.instance import Instance

WITH_HEADERS = SimpleNamespace(info={"headers": {"path_in_initrd": "/usr/lib/kindling/headers/x.tar.gz"}})
WITHOUT = SimpleNamespace(info={"headers": None})


def opts(**kw):
    return prepare.CreateOptions(command=("true",), **kw)


def test_headers_are_wanted_by_default():
    config = prepare.make_config(opts())
    assert config["skip_kernel_headers"] is False
    assert prepare.settle_headers(config, WITH_HEADERS, opts()) == config


def test_no_headers_skips_them():
    config = prepare.make_config(opts(headers=False))
    assert config["skip_kernel_headers"] is True
    assert prepare.settle_headers(config, WITHOUT, opts(headers=False))["skip_kernel_headers"] is True


def test_an_initrd_without_headers_skips_them():
    """A --kernel that is not Debian's package: the builder ships no headers."""
    config = prepare.make_config(opts())
    settled = prepare.settle_headers(config, WITHOUT, opts())
    assert settled["skip_kernel_headers"] is True
    assert config["skip_kernel_headers"] is False       # the original is left alone


def test_a_given_initrd_keeps_what_the_user_said(tmp_path):
    given = tmp_path / "initrd.img"
    given.write_bytes(b"0707")
    for headers, skip in ((True, False), (False, True)):
        o = opts(initrd=given, headers=headers)
        assert prepare.settle_headers(prepare.make_config(o), WITHOUT, o)["skip_kernel_headers"] is skip


def test_raw_config_bytes_are_never_changed():
    assert prepare.settle_headers(b'{"entrypoint": ["x"]}', WITHOUT, opts()) == b'{"entrypoint": ["x"]}'


def test_cli_options_reach_create_options(tmp_path):
    given = tmp_path / "initrd.img"
    given.write_bytes(b"0707")
    args = cli.build_parser().parse_args(["create", "--no-headers", "--initrd", str(given), "--", "true"])
    o = options.from_args(options.CreateOptions, args, None)
    assert o.headers is False and o.initrd == given
    prepare.check_inputs(o)
    defaults = options.from_args(options.RunOptions,
                                 cli.build_parser().parse_args(["run", "--", "true"]), None)
    assert defaults.headers is True and defaults.initrd is None


@pytest.mark.parametrize("path, message", [
    ("/nonexistent/initrd.img", "--initrd: /nonexistent/initrd.img does not exist"),
    ("/", "--initrd: / is not a regular file"),
])
def test_initrd_is_checked(path, message):
    with pytest.raises(KindlingError, match=message):
        prepare.check_inputs(opts(initrd=Path(path)))


# --- the agent's port and qemu-guest-agent's (--qga) ----------------------------------

INSTANCE = Instance("0123abcd4567", Path("/i/0123abcd4567"))


def option(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


@pytest.mark.parametrize("agent, qga, devices, chardevs, karg", [
    ("serial", False,
     ["virtio-serial-device", "virtserialport,chardev=agent0,name=org.kindling.agent.0"],
     ["socket,id=agent0,path=/i/0123abcd4567/agent.sock,server=on,wait=off"], "kindling_agent=serial"),
    ("serial", True,
     ["virtio-serial-device", "virtserialport,chardev=agent0,name=org.kindling.agent.0",
      "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"],
     ["socket,id=agent0,path=/i/0123abcd4567/agent.sock,server=on,wait=off",
      "socket,id=qga0,path=/i/0123abcd4567/qga.sock,server=on,wait=off"], "kindling_agent=serial"),
    ("vsock", True,
     ["virtio-serial-device", f"vhost-vsock-device,guest-cid={3 + 0x0123abc}",
      "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"],
     ["socket,id=qga0,path=/i/0123abcd4567/qga.sock,server=on,wait=off"], "kindling_agent=vsock"),
    ("none", False, [], [], "kindling_agent=off"),
    ("none", True,
     ["virtio-serial-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"],
     ["socket,id=qga0,path=/i/0123abcd4567/qga.sock,server=on,wait=off"], "kindling_agent=off"),
])
def test_agent_and_qga_ports(agent, qga, devices, chardevs, karg):
    """One virtio-serial bus holds both ports; qemu-ga's is named as Debian's package expects."""
    argv, kernel_arg = prepare.agent_args(INSTANCE, agent, qemu.machine_for("microvm"), qga)
    assert option(argv, "-device") == devices
    assert option(argv, "-chardev") == chardevs
    assert kernel_arg == karg


def test_qga_reaches_the_qemu_command_line(tmp_path):
    args = cli.build_parser().parse_args(["create", "--qga", "--", "sleep", "1"])
    o = options.from_args(options.CreateOptions, args, None)
    assert o.qga is True
    assert options.from_args(options.RunOptions, cli.build_parser().parse_args(["run", "--", "true"]),
                             None).qga is False
    instance = Instance("0123abcd4567", tmp_path)
    artifacts = SimpleNamespace(kernel=tmp_path / "k", initrd=tmp_path / "i")
    argv = prepare.qemu_argv(instance, artifacts, (), Accel.TCG, o, "qemu")
    assert f"socket,id=qga0,path={tmp_path}/qga.sock,server=on,wait=off" in option(argv, "-chardev")
    assert "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0" in option(argv, "-device")
    assert option(argv, "-device").count("virtio-serial-device") == 1


def test_grpc_port_for_the_agents_grpc_front_end(tmp_path):
    """--grpc: a third port on the same bus, named as agent/front_ends.py looks for it."""
    argv, karg = prepare.agent_args(INSTANCE, "vsock", qemu.machine_for("microvm"), grpc=True)
    assert option(argv, "-device")[0] == "virtio-serial-device"
    assert "virtserialport,chardev=grpc0,name=org.kindling.grpc.0" in option(argv, "-device")
    assert option(argv, "-chardev") == ["socket,id=grpc0,path=/i/0123abcd4567/grpc.sock,server=on,wait=off"]
    assert karg == "kindling_agent=vsock"
    o = options.from_args(options.CreateOptions, cli.build_parser().parse_args(["create", "--grpc", "--", "true"]),
                          None)
    instance = Instance("0123abcd4567", tmp_path)
    artifacts = SimpleNamespace(kernel=tmp_path / "k", initrd=tmp_path / "i")
    argv = prepare.qemu_argv(instance, artifacts, (), Accel.TCG, o, "qemu")
    assert f"socket,id=grpc0,path={tmp_path}/grpc.sock,server=on,wait=off" in option(argv, "-chardev")
