"""initsys/ports.py: /dev/virtio-ports links from the names in sysfs (there is no udev)."""

import os

import pytest

from initsys import devices, ports


def test_a_port_already_named_is_linked_with_no_uevent_monitor(tmp_path, monkeypatch):
    """The name is there: the port is linked at once and pyudev is never loaded (its
    monitor costs PID 1 guest CPU and libudev's pages); a name not there yet is waited
    for on a monitor."""
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    for port, name in (("vport1p1", "kindling.agent"), ("vport1p2", "")):
        (sysfs / port).mkdir(parents=True)
        (sysfs / port / "name").write_text(name + "\n")
    loads = []

    def no_pyudev():
        loads.append(1)
        raise OSError("no uevent socket in this test")

    monkeypatch.setattr(devices, "load_pyudev", no_pyudev)
    path = ports.wait_for_port("kindling.agent", 5, str(sysfs), str(dev))
    assert path == f"{dev}/kindling.agent"
    assert os.readlink(path) == "../vport1p1"
    assert loads == []
    with pytest.raises(OSError, match="no uevent socket"):     # a name to wait for: the monitor
        ports.wait_for_port("other", 0.01, str(sysfs), str(dev))
    assert loads == [1]
