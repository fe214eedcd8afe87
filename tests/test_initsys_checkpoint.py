"""initsys/checkpoint.py on the host: the resume line, the block driver's split, EOF."""

import base64
import os

import pytest

from initsys import checkpoint, kmod

NOW = 1_780_000_000 * 10**9


CONFIG = b'{"cmd": ["/bin/true"]}\n'
B64 = base64.b64encode(CONFIG).decode()


def test_the_resume_line_gives_time_entropy_and_the_config():
    entropy = bytes(range(64))
    assert checkpoint.parse(f"{NOW} {entropy.hex()} {B64}\n") == (NOW, entropy, CONFIG)


@pytest.mark.parametrize("line, says", [
    ("", "expected `<time_ns> <entropy hex> <config.json base64>`"),
    (f"{NOW}\n", "expected `<time_ns> <entropy hex> <config.json base64>`"),
    (f"{NOW} {'00' * 64}\n", "expected `<time_ns> <entropy hex> <config.json base64>`"),
    (f"-5 {'00' * 64} {B64}", "expected `<time_ns> <entropy hex> <config.json base64>`"),
    (f"{NOW} zz {B64}", "is not hex"),
    (f"{NOW} {'00' * 64} not*base64", "the config.json is not base64"),
    (f"{NOW} {'00' * 4} {B64}", "4 bytes, expected 16..512"),
    (f"5 {'00' * 64} {B64}", "not a time between 2000 and 2100"),
])
def test_a_bad_resume_line_is_refused_naming_what(line, says):
    with pytest.raises(ValueError, match="resume line") as e:
        checkpoint.parse(line)
    assert says in str(e.value)


def test_the_block_driver_is_recognised_by_its_file_name():
    assert checkpoint.is_block_driver("/usr/lib/modules/6.1/kernel/drivers/block/virtio_blk.ko")
    assert checkpoint.is_block_driver("/lib/modules/x/virtio_blk.ko.xz")
    assert not checkpoint.is_block_driver("/lib/modules/x/virtio_blk_extra.ko")
    assert not checkpoint.is_block_driver("/lib/modules/x/virtio_net.ko")


def test_kmod_loads_only_what_the_predicate_keeps(tmp_path, monkeypatch):
    listed = [str(tmp_path / n) for n in ("virtio_mmio.ko", "virtio_blk.ko", "virtio_net.ko")]
    (tmp_path / "modules.list").write_text("\n".join(listed) + "\n")
    loaded = []
    monkeypatch.setattr(kmod, "load", loaded.append)
    kmod.load_all(tmp_path / "modules.list", tmp_path / "none",
                  only=lambda p: not checkpoint.is_block_driver(p))
    assert loaded == [listed[0], listed[2]]
    loaded.clear()
    kmod.load_all(tmp_path / "modules.list", tmp_path / "none", only=checkpoint.is_block_driver)
    assert loaded == [listed[1]]


def test_eof_before_the_line_is_an_error_not_a_spin():
    r, w = os.pipe()
    os.write(w, b"123")
    os.close(w)
    with pytest.raises(OSError, match="closed it before resuming"):
        checkpoint.read_line(r)
    os.close(r)


def test_a_line_over_the_limit_is_an_error(monkeypatch):
    monkeypatch.setattr(checkpoint, "MAX_LINE", 8)
    r, w = os.pipe()
    os.write(w, b"1234567890")
    with pytest.raises(OSError, match="a line over 8 bytes"):
        checkpoint.read_line(r)
    os.close(r)
    os.close(w)


def test_a_line_split_over_reads_is_read_whole():
    r, w = os.pipe()
    os.write(w, b"12 ab")
    os.write(w, b"cd\n")
    assert checkpoint.read_line(r) == "12 abcd\n"
    os.close(r)
    os.close(w)


def test_resume_applies_the_hosts_clock_and_entropy_before_answering(monkeypatch):
    """The clone's reseed: sync.apply gets the host's time and bytes (credited), then `ok`."""
    from agent import sync
    from initsys import console

    to_guest_r, to_guest_w = os.pipe()
    from_guest_r, from_guest_w = os.pipe()
    port = os.dup(to_guest_r)
    monkeypatch.setattr(checkpoint, "open_port", lambda: port)
    monkeypatch.setattr(os, "write", _write_to(from_guest_w, port, os.write))
    emitted, applied = [], []
    monkeypatch.setattr(console, "emit", emitted.append)
    monkeypatch.setattr(sync, "apply", lambda time_ns, info: applied.append(
        (time_ns, bytes(info), emitted[:])))
    entropy = os.urandom(64)
    os.write(to_guest_w, f"{NOW} {entropy.hex()} {B64}\n".encode())
    assert checkpoint.wait_and_resume() == CONFIG
    assert emitted and emitted[0].startswith("KINDLING-CHECKPOINT ts=")
    assert applied == [(NOW, bytes(sync.rand_pool_info(entropy)), emitted)]
    assert os.read(from_guest_r, 10) == checkpoint.ANSWER
    for fd in (to_guest_r, to_guest_w, from_guest_r, from_guest_w):
        os.close(fd)


def _write_to(target, port, real_write):
    """os.write, with the port's writes sent to `target` (a pipe's read end cannot be written)."""
    return lambda fd, data: real_write(target if fd == port else fd, data)


def test_the_template_loads_the_block_driver_with_autoprobe_off(tmp_path, monkeypatch):
    """Issue 12: the driver's code is loaded before the checkpoint, bound to no disk."""
    listed = [f"/lib/modules/x/{n}" for n in ("virtio_pci.ko", "virtio_blk.ko", "virtio_net.ko")]
    monkeypatch.setattr(kmod, "module_paths", lambda path: listed if path == kmod.MODULES_LIST else [])
    (tmp_path / "drivers_autoprobe").write_text("1\n")
    (tmp_path / "devices").mkdir()
    seen = []
    monkeypatch.setattr(kmod, "load", lambda path: seen.append(
        (os.path.basename(path), (tmp_path / "drivers_autoprobe").read_text().strip())))
    checkpoint.load_modules_unbound(str(tmp_path))
    assert seen == [("virtio_pci.ko", "1"), ("virtio_net.ko", "1"), ("virtio_blk.ko", "0")]
    assert (tmp_path / "drivers_autoprobe").read_text() == "1"


def virtio_device(bus, name, device_id, bound=False):
    path = bus / "devices" / name
    path.mkdir(parents=True)
    (path / "device").write_text(f"0x{device_id:04x}\n")
    if bound:
        (path / "driver").mkdir()


def test_a_clone_binds_its_unbound_block_devices_in_index_order(tmp_path, monkeypatch):
    virtio_device(tmp_path, "virtio10", 2)
    virtio_device(tmp_path, "virtio2", 2)
    virtio_device(tmp_path, "virtio0", 3)               # the console
    virtio_device(tmp_path, "virtio1", 1, bound=True)   # the network card
    virtio_device(tmp_path, "virtio3", 2, bound=True)   # already bound: left alone
    monkeypatch.setattr(kmod, "module_paths", lambda path: [])
    names = checkpoint.load_modules_unbound(str(tmp_path))    # the template lists them
    assert names == ["virtio2", "virtio10"]
    writes = []
    monkeypatch.setattr(checkpoint, "_write", lambda path, text: writes.append((path, text)))
    checkpoint.bind_disks(names, str(tmp_path))               # each clone binds them
    bind = f"{tmp_path}/drivers/virtio_blk/bind"
    assert writes == [(bind, "virtio2"), (bind, "virtio10")]
