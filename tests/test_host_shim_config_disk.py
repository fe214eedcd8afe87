"""`--config-disk`: the host reads the disk's /config.json (host_shim/config_disk.py), so a
config that enables the agent makes Running wait for AGENT-READY (issue 18)."""

import subprocess

from host_shim import config_disk, prepare
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


def test_a_disk_the_host_cannot_read_is_left_to_the_guest(tmp_path):
    """Not a filesystem, or no /config.json: booted as given; the guest's config stage
    reports it (tests/test_vm_exec.py), and no agent is waited for meanwhile."""
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\xde\xad\xbe\xef" * 2048)
    assert config_disk.read(junk) is None
    src = tmp_path / "empty.d"
    src.mkdir()
    (src / "other.json").write_text("{}")
    empty = tmp_path / "empty.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-b", "4096", "-d", str(src),
                    str(empty), "4M"], check=True, capture_output=True, timeout=60)
    assert config_disk.read(empty) is None
    assert prepare.agent_skipped(prepare.config_for(options_with(junk))) is True
