"""host_shim/lifecycle.py without a VM: recording observations (the transitions table
enforced, inferred states, time-to-Running), and metadata.json with name/id resolution."""

import pytest

from host_shim import lifecycle, metadata
from host_shim import timeline as tl
from host_shim.errors import KindlingError, NoSuchInstance
from host_shim.instance import Instance
from host_shim.markers import MarkerRecord
from host_shim.metadata import Metadata
from host_shim.state import State
from initsys import protocol

T0 = 1_800_000_000_000_000_000
SEC = 1_000_000_000


def meta(**overrides) -> Metadata:
    m = Metadata(id="0123456789ab", name="web", created_at=T0, command=["sh"], config={},
                 agent_skipped=True, argv=["qemu"], accel="tcg", log_max_bytes=1 << 20,
                 log_keep=3, boot=1, boot_requested_at=T0)
    m.record_state(State.STOPPED, at_ns=T0)
    for key, value in overrides.items():
        setattr(m, key, value)
    return m


def states(m: Metadata) -> list[tuple[str, bool]]:
    return [(h["state"], h["inferred"]) for h in m.history]


def test_a_boot_observed_step_by_step():
    m = meta()
    for state in (State.CREATED, State.INITIALIZING):
        lifecycle.apply_observation(m, state, now=T0 + SEC)
    m.markers.add(protocol.parse_line(protocol.program_start_line("exec", T0)), T0 + 4 * SEC)
    lifecycle.apply_observation(m, State.RUNNING, now=T0 + 5 * SEC)
    assert m.time_to_running == 4.0                  # when the marker was seen, not the probe
    assert [e.name for e in m.events] == [tl.RUNNING]
    lifecycle.apply_observation(m, State.RUNNING, now=T0 + 6 * SEC)     # nothing new
    lifecycle.apply_observation(m, State.STOPPED, now=T0 + 9 * SEC)
    assert states(m) == [("Stopped", False), ("Created", False), ("Initializing", False),
                         ("Running", False), ("Shutdown", True), ("Stopped", False)]
    assert m.time_to_running == 4.0 and m.state is State.STOPPED


def test_forbidden_observation_makes_it_unknown_until_it_fits_again():
    m = meta()
    lifecycle.apply_observation(m, State.CREATED)
    lifecycle.apply_observation(m, State.INITIALIZING)
    lifecycle.apply_observation(m, State.PAUSED)     # someone paused QEMU during boot
    assert m.state is State.UNKNOWN and m.last_known is State.INITIALIZING
    assert "forbidden state transition Initializing -> Paused" in m.error
    lifecycle.apply_observation(m, State.INITIALIZING)       # resumed
    assert m.state is State.INITIALIZING and m.error is None
    assert [s for s, _ in states(m)][-2:] == ["Unknown", "Initializing"]


def test_unreachable_vmm_is_unknown_with_the_error():
    m = meta()
    lifecycle.apply_observation(m, State.CREATED)
    lifecycle.apply_observation(m, State.UNKNOWN, error="QEMU (pid 7) did not answer")
    assert (m.state, m.last_known, m.error) == (State.UNKNOWN, State.CREATED,
                                                "QEMU (pid 7) did not answer")
    lifecycle.apply_observation(m, State.INITIALIZING)
    assert m.state is State.INITIALIZING


def test_inferred_running_has_no_time_to_running():
    m = meta()
    lifecycle.apply_observation(m, State.CREATED)
    lifecycle.apply_observation(m, State.INITIALIZING)
    lifecycle.apply_observation(m, State.RUNNING, inferred=True)
    assert m.time_to_running is None and m.reached_this_boot(State.RUNNING)
    assert states(m)[-1] == ("Running", True)


def test_metadata_round_trip_and_resolve(tmp_path):
    a, b = Instance.create(tmp_path), Instance.create(tmp_path)
    ma = meta(id=a.id, name="alpha")
    ma.markers = MarkerRecord()
    ma.markers.add(protocol.parse_line(protocol.program_start_line("exec", T0)), T0 + SEC)
    ma.mark(tl.LAUNCH, T0 + SEC // 2)
    metadata.save(a, ma)
    metadata.save(b, meta(id=b.id, name="beta"))
    again = metadata.load(a)
    assert again.to_json() == ma.to_json()
    assert again.markers.program_started and again.events[0].at == 0.5
    assert metadata.resolve(tmp_path, "alpha")[0] == a
    assert metadata.resolve(tmp_path, b.id)[0] == b
    assert metadata.resolve(tmp_path, a.id[:8])[0] == a
    with pytest.raises(NoSuchInstance, match="no such instance: gamma"):
        metadata.resolve(tmp_path, "gamma")


def test_ambiguous_prefix(tmp_path):
    for instance_id, name in (("aa1111111111", "x"), ("aa2222222222", "y")):
        inst = Instance(instance_id, tmp_path / "instances" / instance_id)
        inst.dir.mkdir(parents=True)
        metadata.save(inst, meta(id=instance_id, name=name))
    with pytest.raises(KindlingError, match="'aa' is ambiguous: it matches aa1111111111, "
                                            "aa2222222222"):
        metadata.resolve(tmp_path, "aa")
    assert metadata.resolve(tmp_path, "aa2")[1].name == "y"
    with pytest.raises(KindlingError, match="no instance given"):
        metadata.resolve(tmp_path, "")


async def test_update_of_a_deleted_instance(tmp_path):
    inst = Instance.create(tmp_path)
    metadata.save(inst, meta(id=inst.id))
    inst.remove()
    with pytest.raises(NoSuchInstance, match="it was deleted"):
        async with metadata.update(inst):
            pass


def test_corrupt_metadata_is_named(tmp_path):
    inst = Instance.create(tmp_path)
    inst.metadata_path.write_text("{")
    with pytest.raises(KindlingError, match=f"corrupt {inst.metadata_path}"):
        metadata.load(inst)
