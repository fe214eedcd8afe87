"""Disk identification (serial first, then position) and superblock detection."""

import subprocess

import pytest

from initsys import devices
from initsys.devices import fs_type, resolve_roles

ROLES = ("rootfs", "overlay", "config")


@pytest.mark.parametrize("disks, expected", [
    # Kindling's host: serials on every disk
    ({"vda": "rootfs", "vdb": "overlay", "vdc": "config"},
     {"rootfs": "vda", "overlay": "vdb", "config": "vdc"}),
    # serials win over position
    ({"vda": "config", "vdb": "overlay", "vdc": "rootfs"},
     {"rootfs": "vdc", "overlay": "vdb", "config": "vda"}),
    # a hypeman host: no serials, positional order
    ({"vda": "", "vdb": "", "vdc": ""}, {"rootfs": "vda", "overlay": "vdb", "config": "vdc"}),
    # not all there yet
    ({"vda": "", "vdb": ""}, {"rootfs": "vda", "overlay": "vdb"}),
    # a positional disk that carries another serial is not taken for its position
    ({"vda": "vol-0", "vdb": "overlay"}, {"overlay": "vdb"}),
    ({}, {}),
])
def test_resolve_roles(disks, expected):
    assert resolve_roles(disks, ROLES) == expected


def _mkfs(argv, timeout=60):
    subprocess.run(argv, check=True, capture_output=True, timeout=timeout)


def test_fs_type_reads_real_superblocks(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    ext4 = tmp_path / "e.img"
    with open(ext4, "wb") as f:
        f.truncate(8 << 20)
    _mkfs(["mkfs.ext4", "-q", "-F", "-d", str(src), str(ext4)])
    erofs = tmp_path / "r.img"
    _mkfs(["mkfs.erofs", "--quiet", str(erofs), str(src)])
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\x00" * 8192)
    assert fs_type(str(ext4)) == "ext4"
    assert fs_type(str(erofs)) == "erofs"
    assert fs_type(str(junk)) is None


def test_power_button_presses_are_counted_from_input_events():
    from initsys.powerbutton import EV_KEY, EVENT, KEY_POWER, presses
    press = EVENT.pack(0, 0, EV_KEY, KEY_POWER, 1)
    release = EVENT.pack(0, 0, EV_KEY, KEY_POWER, 0)
    sync = EVENT.pack(0, 0, 0, 0, 0)
    other = EVENT.pack(0, 0, EV_KEY, 30, 1)
    assert presses(press + sync + release + sync) == 1
    assert presses(other + release) == 0
    assert presses(press + press[:10]) == 1   # a torn trailing event is ignored


def test_coldplug_reads_the_disks_and_their_serials_from_sysfs(tmp_path):
    """The disks that exist before the wait: /sys/block's entries (not libudev's enumeration)."""
    for name, serial in (("vda", "rootfs"), ("vdb", "overlay"), ("vdc", None)):
        (tmp_path / "block" / name).mkdir(parents=True)
        if serial:
            (tmp_path / "block" / name / "serial").write_text(serial + "\n")
    watcher = object.__new__(devices.BlockWatcher)   # no uevent socket: only what exists
    watcher.disks = {}
    watcher.coldplug(str(tmp_path))
    assert watcher.disks == {"vda": "rootfs", "vdb": "overlay", "vdc": ""}
    assert watcher._found(("rootfs", "overlay")) == {"rootfs": "/dev/vda", "overlay": "/dev/vdb"}


class FakeWatcher:
    """A BlockWatcher that never sees a uevent: the disks it finds are those that exist."""
    made = 0

    def __init__(self):
        FakeWatcher.made += 1
        self.disks = {}

    async def wait_for_names(self, names):
        import trio
        await trio.sleep_forever()


def test_volume_disks_that_exist_cost_no_uevent_monitor(tmp_path, monkeypatch):
    """devices.wait_for_disks: all there -> no BlockWatcher (pyudev's monitor costs a
    clone guest CPU after its restore); one missing -> it is waited for, then named."""
    import trio
    for name in ("vdd", "vde"):
        (tmp_path / "block" / name).mkdir(parents=True)
    FakeWatcher.made = 0
    monkeypatch.setattr(devices, "BlockWatcher", FakeWatcher)
    assert trio.run(devices.wait_for_disks, ["vdd", "vde"], 5, str(tmp_path)) == []
    assert FakeWatcher.made == 0
    assert trio.run(devices.wait_for_disks, ["vdd", "vdf"], 0.01, str(tmp_path)) == ["vdd", "vdf"]
    assert FakeWatcher.made == 1


def test_disks_already_there_cost_no_uevent_monitor(tmp_path, monkeypatch):
    """devices.wait_for_roles: the disks a cold boot's block driver probed while it loaded
    are found by listing /sys/block, with no BlockWatcher (pyudev and libudev stay out of
    PID 1); a role still missing is waited for on a watcher, then named in the error."""
    for name, serial in (("vda", "rootfs"), ("vdb", "overlay")):
        (tmp_path / "block" / name).mkdir(parents=True)
        (tmp_path / "block" / name / "serial").write_text(serial + "\n")

    class NeverWatcher:
        made = 0

        def __init__(self):
            NeverWatcher.made += 1
            self.disks = devices.disks_present(str(tmp_path))

        def wait_for_roles(self, roles, timeout):
            return devices.roles_found(self.disks, roles)

    monkeypatch.setattr(devices, "BlockWatcher", NeverWatcher)
    found = devices.wait_for_roles(("rootfs", "overlay"), 5, sysfs=str(tmp_path))
    assert found == {"rootfs": "/dev/vda", "overlay": "/dev/vdb"}
    assert NeverWatcher.made == 0
    with pytest.raises(OSError, match=r"within 5 s: config \(serial=config or /dev/vdc\)"):
        devices.wait_for_roles(("rootfs", "overlay", "config"), 5, sysfs=str(tmp_path))
    assert NeverWatcher.made == 1
