"""host_shim/prepare.py without a VM: the kernel-headers switch of config.json and --initrd."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from host_shim import cli, prepare
from host_shim.errors import KindlingError

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
    fields = cli._create_fields(args)
    assert fields["headers"] is False and fields["initrd"] == given
    prepare.check_inputs(prepare.CreateOptions(**fields))
    defaults = cli._create_fields(cli.build_parser().parse_args(["run", "--", "true"]))
    assert defaults["headers"] is True and defaults["initrd"] is None


@pytest.mark.parametrize("path, message", [
    ("/nonexistent/initrd.img", "--initrd: /nonexistent/initrd.img does not exist"),
    ("/", "--initrd: / is not a regular file"),
])
def test_initrd_is_checked(path, message):
    with pytest.raises(KindlingError, match=message):
        prepare.check_inputs(opts(initrd=Path(path)))
