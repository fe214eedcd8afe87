"""`--config-disk`: the host reads the disk's /config.json (host_shim/config_disk.py), so a
config that enables the agent makes Running wait for AGENT-READY (issue 18)."""

import subprocess

import pytest

from host_shim import config_disk, prepare
from host_shim.errors import KindlingError
from host_shim.options import CreateOptions
from tests.hypeman_config import config_disk as make_disk, go_json, hypeman_config

CONFIG = hypeman_config(["/bin/sh", "-c", "echo a&b"], None, env={"X": "<y>"})


def options_with(disk) -> CreateOptions:
    return CreateOptions(config_disk=disk)


def test_hypeman_disk_with_the_agent_on_is_not_skipped(tmp_path):
    data = go_json(CONFIG)
    assert b"\\u0026" in data and b"skip_guest_agent" not in data     # as Go writes it
    disk = make_disk(tmp_path, data)
    config = prepare.config_for(options_with(disk))
    assert config == data
    assert prepare.agent_skipped(config) is False


def test_hypeman_disk_that_skips_the_agent(tmp_path):
    disk = make_disk(tmp_path, go_json(dict(CONFIG, skip_guest_agent=True)))
    assert prepare.agent_skipped(prepare.config_for(options_with(disk))) is True


def test_erofs_config_disk(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_bytes(go_json(CONFIG))
    image = tmp_path / "config.erofs"
    subprocess.run(["mkfs.erofs", str(image), str(src)], check=True, capture_output=True,
                   timeout=60)
    assert config_disk.read(image) == go_json(CONFIG)


def test_not_a_filesystem_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\0" * 8192)
    with pytest.raises(KindlingError, match=r"--config-disk: .*junk.img is neither an ext4 nor an erofs image"):
        config_disk.read(junk)


def test_disk_without_config_json_is_a_clear_error(tmp_path):
    src = tmp_path / "empty.ext4.d"
    disk = make_disk(tmp_path, b"{}", name="empty.ext4")
    (src / "config.json").unlink()
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-b", "4096", "-d", str(src),
                    str(disk), "4M"], check=True, capture_output=True, timeout=60)
    with pytest.raises(KindlingError, match=r"has no readable /config.json"):
        config_disk.read(disk)
