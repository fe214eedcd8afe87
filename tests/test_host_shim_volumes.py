"""Volume specs, the disk layout they give, and the per-instance network namespace."""

import subprocess

import pytest

from host_shim import netns, sizes, volumes
from host_shim.errors import KindlingError


@pytest.fixture
def home(tmp_path):
    (tmp_path / "volumes").mkdir()
    for name in ("a", "b"):
        (tmp_path / "volumes" / f"{name}.img").write_bytes(b"")
    return tmp_path


def test_parse_spec_by_name_and_path(home, tmp_path):
    assert volumes.parse_spec(home, "a:/data") == volumes.VolumeSpec(home / "volumes/a.img", "/data", "rw")
    img = tmp_path / "x.img"
    img.write_bytes(b"")
    assert volumes.parse_spec(home, f"{img}:/x:overlay").mode == "overlay"


@pytest.mark.parametrize("text, message", [
    ("a", "expected IMAGE:/path"),
    ("a:data", "must be absolute"),
    ("a:/data:rx", "mode 'rx'"),
    ("missing:/data", "not found"),
])
def test_parse_spec_errors_name_the_problem(home, text, message):
    with pytest.raises(KindlingError, match=message):
        volumes.parse_spec(home, text)


def test_layout_gives_devices_in_order_with_overlay_disks(home):
    specs = [volumes.VolumeSpec(home / "volumes/a.img", "/a", "ro"),
             volumes.VolumeSpec(home / "volumes/b.img", "/b", "overlay"),
             volumes.VolumeSpec(home / "volumes/a.img", "/c", "rw")]
    disks, mounts = volumes.layout(specs)
    assert [(d.serial, d.readonly, d.image is None) for d in disks] == [
        ("vol-0", True, False), ("vol-1", True, False), ("vol-2", False, True), ("vol-3", False, False)]
    assert mounts == [
        {"device": "/dev/vdd", "path": "/a", "mode": "ro"},
        {"device": "/dev/vde", "path": "/b", "mode": "overlay", "overlay_device": "/dev/vdf"},
        {"device": "/dev/vdg", "path": "/c", "mode": "rw"},
    ]


@pytest.mark.parametrize("text, size", [("64M", 64 << 20), ("1G", 1 << 30), ("512k", 512 << 10),
                                        ("4096", 4096), ("2MiB", 2 << 20), ("100B", 100)])
def test_parse_size(text, size):
    assert sizes.parse_size(text, "--size") == size


def test_a_bare_number_counts_in_the_options_unit():
    assert sizes.parse_size("512", "--memory", bare=sizes.MIB) == 512 << 20
    assert sizes.parse_size(512, "--memory", bare=sizes.MIB) == 512 << 20
    assert sizes.parse_size("512K", "--memory", bare=sizes.MIB) == 512 << 10


def test_parse_size_rejects_garbage_naming_the_flag():
    with pytest.raises(KindlingError, match="--size '12Q': expected a size such as 512M"):
        sizes.parse_size("12Q", "--size")


def test_namespace_with_tap_is_created_and_removed():
    net = netns.create("testns1")
    try:
        out = subprocess.run(["ip", "-n", net.namespace, "-j", "addr", "show", net.tap],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        assert f'"local":"{net.gateway}"' in out
    finally:
        netns.destroy_if_present("testns1")
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    assert net.namespace not in names
