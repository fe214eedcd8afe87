"""host_shim/instance.py (per-run directories) and host_shim/state.py (lifecycle states)."""

import pytest

from host_shim import instance as instance_mod
from host_shim.errors import KindlingError
from host_shim.instance import Instance
from host_shim.state import State, running_guest_state


def test_layout(tmp_path):
    inst = Instance.create(tmp_path)
    assert inst.dir == tmp_path / "instances" / inst.id
    assert inst.app_log == inst.dir / "logs" / "app.log"
    assert inst.app_log.exists() and inst.app_log.stat().st_size == 0
    assert inst.vmm_log == inst.dir / "logs" / "vmm.log"
    assert inst.qmp_socket == inst.dir / "qmp.sock"
    assert inst.config_img == inst.dir / "config.img"
    assert inst.overlay_img == inst.dir / "overlay.img"
    inst.remove()
    assert not inst.dir.exists()


def test_ids_are_unique(tmp_path):
    assert Instance.create(tmp_path).id != Instance.create(tmp_path).id


def test_socket_path_too_long(tmp_path):
    with pytest.raises(KindlingError) as info:
        Instance.create(tmp_path / ("x" * 100))
    assert "too long for a unix socket" in info.value.message
    assert "$KINDLING_HOME" in info.value.hint


def test_unwritable_home(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(KindlingError, match="cannot create instance directory"):
        Instance.create(blocker)


def test_environment_locations(monkeypatch, tmp_path):
    monkeypatch.setenv("KINDLING_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("KINDLING_CACHE", str(tmp_path / "c"))
    assert instance_mod.kindling_home() == tmp_path / "h"
    assert instance_mod.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("KINDLING_HOME")
    monkeypatch.delenv("KINDLING_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert instance_mod.kindling_home() == tmp_path / ".local/share/kindling"
    assert instance_mod.cache_dir() == tmp_path / ".cache/kindling"


@pytest.mark.parametrize("program_started, agent_ready, agent_skipped, state", [
    (False, False, True, State.INITIALIZING),
    (True, False, True, State.RUNNING),
    (True, False, False, State.INITIALIZING),
    (False, True, False, State.INITIALIZING),
    (True, True, False, State.RUNNING),
])
def test_running_guest_state(program_started, agent_ready, agent_skipped, state):
    assert running_guest_state(program_started, agent_ready, agent_skipped) is state
