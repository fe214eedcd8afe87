"""host_shim/watchdog.py, the early-boot watchdog's decision, with a fake clock and fake
console batches and CPU times (no VM), and how a relaunch is recorded and shown.
tests/test_vm_watchdog.py proves the relaunch with a real kernel."""

import os

import pytest

from host_shim import options, qemu, watchdog
from host_shim import timeline as tl
from host_shim.errors import KindlingError
from host_shim.follow import Batch, markers_in
from host_shim.info import InstanceInfo
from host_shim.instance import Instance
from host_shim.metadata import Metadata
from host_shim.timeline import HostEvent

S = 1_000_000_000                       # ns per second
REQUESTED = 1_700_000_000 * S
STAGE = "KINDLING-STAGE name=mounts start=0.100000 end=0.200000"
BOUND = watchdog.EARLY_BOOT_TIMEOUT
BUSY = lambda: BOUND             # noqa: E731  (QEMU spun: as much CPU as wall time)
STARVED = lambda: 1.0            # noqa: E731  (a loaded host gave QEMU little CPU)


def meta(**kw) -> Metadata:
    m = Metadata(id="abc", name="abc", created_at=REQUESTED, command=["true"], config=None,
                 agent_skipped=True, argv=[], accel="tcg", log_max_bytes=1 << 20, log_keep=1,
                 boot=1, boot_requested_at=REQUESTED,
                 events=[HostEvent(tl.GUEST_STARTED, 0.5)])
    for k, v in kw.items():
        setattr(m, k, v)
    return m


def dog(**kw) -> watchdog.EarlyBootWatchdog:
    return watchdog.EarlyBootWatchdog.for_boot(meta(**kw))


STARTED = REQUESTED + S // 2


def at(seconds: float) -> int:
    return STARTED + int(seconds * S)


def test_a_silent_busy_boot_is_relaunched_once_the_bound_passed():
    d = dog()
    d.see(Batch())
    assert d.started_ns == STARTED and d.armed
    assert d.due(at(BOUND - 0.1), BUSY) is None
    reason = d.due(at(BOUND), BUSY)
    assert reason == (f"{watchdog.REASON_PREFIX}: no boot stage line {BOUND:.0f} s after the "
                      f"guest started (the console stayed silent, QEMU used {BOUND:.1f} s of CPU)")


def test_kernel_lines_without_a_stage_do_not_count_as_pid1():
    d = dog()
    d.see(Batch(lines=["Linux version 6.1", "Run /init as init process"]))
    assert "(2 console lines, none from PID 1, " in d.due(at(BOUND), BUSY)


@pytest.mark.parametrize("batch", [
    Batch(lines=[STAGE], markers=markers_in([STAGE])),                # a trusted stage line
    Batch(lines=[f"noise {STAGE}"]),   # marker-shaped but untrusted: still not relaunched
    Batch(lines=[STAGE]),              # control channel on: console markers are held back
    Batch(control=[STAGE]),            # PID 1's control channel spoke
], ids=["stage", "untrusted", "held", "control"])
def test_any_sign_of_pid1_disarms_it_for_the_boot(batch):
    d = dog()
    d.see(batch)
    assert d.due(at(10 * BOUND), BUSY) is None


def test_a_starved_boot_gets_more_time_but_not_forever():
    d = dog()
    assert d.due(at(BOUND), STARVED) is None
    assert d.due(at(BOUND), lambda: None) is None          # QEMU's CPU time unknown
    assert d.due(at(watchdog.IDLE_HANG_FACTOR * BOUND - 1), STARVED) is None
    reason = d.due(at(watchdog.IDLE_HANG_FACTOR * BOUND), STARVED)
    assert "QEMU used 1.0 s of CPU" in reason


def test_the_cpu_time_is_read_only_once_the_bound_passed():
    def never():
        raise AssertionError("read too early")
    assert dog().due(at(1), never) is None


def test_off_not_started_or_out_of_relaunches():
    assert not dog(options={"early_boot_timeout": 0.0}).armed
    assert dog(options={"early_boot_timeout": 0.0}).due(at(1000), BUSY) is None
    assert dog(options={"early_boot_timeout": 5.0}).due(at(5), BUSY) is not None
    assert dog(events=[]).due(at(1000), BUSY) is None       # Created (-S): not started yet
    this = {"boot": 1, "at": 0, "requested": REQUESTED, "reason": "r"}
    earlier = dict(this, requested=REQUESTED - S)
    assert dog(relaunches=[this] * (watchdog.MAX_RELAUNCHES - 1)).armed
    assert not dog(relaunches=[this] * watchdog.MAX_RELAUNCHES).armed
    assert dog(relaunches=[earlier] * watchdog.MAX_RELAUNCHES).armed     # another start


def test_qemu_cpu_seconds_reads_proc():
    busy_until = os.times().user + 0.05
    while os.times().user < busy_until:
        pass
    mine = watchdog.qemu_cpu_seconds(os.getpid())
    assert mine >= 0.05
    assert watchdog.qemu_cpu_seconds(None) is None
    assert watchdog.qemu_cpu_seconds(2 ** 22 + 1) is None     # above pid_max: no such process


def test_relaunches_are_persisted_and_shown(tmp_path):
    entry = {"boot": 1, "at": REQUESTED + 31 * S, "requested": REQUESTED,
             "reason": f"{watchdog.REASON_PREFIX}: no boot stage line 31 s after ..."}
    m = meta(relaunches=[entry])
    again = Metadata.from_json(m.to_json())
    assert again.relaunches == [entry]
    info = InstanceInfo.of(Instance.create(tmp_path), again).to_json()
    assert info["relaunches"] == [{"boot": 1, "at": "2023-11-14T22:13:51.000000000Z",
                                   "reason": entry["reason"]}]
    assert InstanceInfo.of(Instance.create(tmp_path), meta()).to_json()["relaunches"] == []
    assert watchdog.describe(entry) == f"boot 1: {entry['reason']}"


@pytest.mark.parametrize("value, expected", [("0", 0.0), ("0.0", 0.0), ("12.5", 12.5),
                                             (7, 7.0)])
def test_the_option_takes_seconds_or_zero(value, expected):
    opts = options.make(options.CreateOptions, {"early_boot_timeout": value}, None)
    assert opts.early_boot_timeout == expected
    assert options.to_json(opts)["early_boot_timeout"] == expected


@pytest.mark.parametrize("value, message", [
    ("-1", r"--early-boot-timeout -1: must be positive, or 0 \(off\)"),
    ("soon", "--early-boot-timeout 'soon': expected a number of seconds")])
def test_a_bad_bound_names_the_flag(value, message):
    with pytest.raises(KindlingError, match=message):
        options.make(options.CreateOptions, {"early_boot_timeout": value}, None)


def test_first_launch_kernel_args_go_to_the_kernel_command_line():
    argv = ["qemu", "-kernel", "k", "-append", "console=ttyS0 quiet", "-m", "512"]
    assert qemu.with_kernel_args(argv, ("rdinit=/x", "rootdelay=9")) == [
        "qemu", "-kernel", "k", "-append", "console=ttyS0 quiet rdinit=/x rootdelay=9",
        "-m", "512"]
    assert qemu.with_kernel_args(argv, ()) == argv
