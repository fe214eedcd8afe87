"""host_shim/follow.py (the one console follower) on real files, without a VM, and the
decisions `kindling run` makes from it: the boot deadline's message, and which program a
systemd-mode run hands to the agent (initmode.split_run, runner.plan)."""

from functools import partial

import pytest
import trio
import trio.testing

from host_shim import follow, initmode, runner
from host_shim.errors import KindlingError
from host_shim.instance import Instance
from initsys import protocol

STAGE = "KINDLING-STAGE name=mounts start=0.100000 end=0.200000"
START = "HYPEMAN-PROGRAM-START ts=2026-01-01T00:00:00.000000000Z mode=exec"


async def test_batches_lines_markers_and_the_first_bytes(tmp_path):
    inst = Instance.create(tmp_path)
    inst.app_log.write_bytes(b"")
    async with follow.ConsoleFollower(inst, None) as follower:
        empty = await follower.next()
        assert empty == follow.Batch()
        assert follower.started_empty is True
        assert follower.progress.describe() == "the guest printed nothing on its console"
        with open(inst.app_log, "ab", buffering=0) as f:
            f.write(f"Linux version 6.1\r\n{STAGE}\r\nhi {START}\r\nunterminated".encode())
        batch = await follower.next()
        assert batch.lines == ["Linux version 6.1", STAGE, f"hi {START}"]
        assert [m.kind for m in batch.markers] == [protocol.STAGE, protocol.PROGRAM_START]
        assert batch.first_bytes and not batch.final
        assert follower.progress.describe() == ("last boot stage: mounts; last marker: "
                                                "HYPEMAN-PROGRAM-START mode=exec")
        again = await follower.next()
        assert not again.first_bytes and again.lines == []
        last = await follower.next(final=True)
        assert last.lines == ["unterminated"] and last.final


async def test_lines_without_markers_are_counted(tmp_path):
    inst = Instance.create(tmp_path)
    inst.app_log.write_bytes(b"one\ntwo\n")
    async with follow.ConsoleFollower(inst, None) as follower:
        batch = await follower.next()
        assert batch.first_bytes and follower.started_empty is False
        assert follower.progress.describe() == "2 console lines, no boot stage or marker yet"


async def test_next_pauses_briefly_when_nothing_came(tmp_path):
    inst = Instance.create(tmp_path)
    inst.app_log.write_bytes(b"")
    async with follow.ConsoleFollower(inst, None) as follower:
        began = trio.current_time()
        assert await follower.next() == follow.Batch()
        assert follow.POLL_INTERVAL <= trio.current_time() - began < 5


async def test_next_is_woken_at_once(tmp_path, monkeypatch):
    inst = Instance.create(tmp_path)
    inst.app_log.write_bytes(b"")
    monkeypatch.setattr(follow, "POLL_INTERVAL", 1000.0)
    wake = trio.Event()
    async with follow.ConsoleFollower(inst, None) as follower:
        with trio.fail_after(30):           # far below the pause: only the wake ends it
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(follower.next, wake=wake))
                await trio.testing.wait_all_tasks_blocked()
                wake.set()


def test_markers_come_from_one_function():
    lines = ["plain", STAGE, f"prefix {START}", "HYPEMAN-EXIT code=3 message=\"exit code 3\""]
    assert [m.kind for m in follow.markers_in(lines)] == [protocol.STAGE, protocol.PROGRAM_START,
                                                          protocol.EXIT]


# --- the boot deadline's message ---------------------------------------------------

def test_boot_deadline_error_names_progress(tmp_path):
    inst = Instance.create(tmp_path)
    outcome = runner.Outcome(boot_timed_out=True, progress="last boot stage: mounts; last "
                             "marker: KINDLING-STAGE name=mounts")
    opts = runner.RunOptions(command=("true",), boot_timeout=7)
    with pytest.raises(KindlingError) as info:
        runner.exit_status(outcome, inst, opts)
    assert info.value.message == (
        "the guest did not finish booting within 7 s, the boot deadline (last boot stage: "
        "mounts; last marker: KINDLING-STAGE name=mounts); the VM was stopped")
    assert "--boot-timeout" in info.value.hint


def test_run_timeout_during_the_boot_names_progress_too(tmp_path):
    inst = Instance.create(tmp_path)
    outcome = runner.Outcome(timed_out=True, progress="the guest printed nothing on its console")
    with pytest.raises(KindlingError) as info:
        runner.exit_status(outcome, inst, runner.RunOptions(command=("true",), timeout=5))
    assert info.value.message == (
        "timed out after 5 s before the program finished (still booting: the guest printed "
        "nothing on its console); the VM was stopped")


def test_program_run_through_the_agent_gives_the_exit_code(tmp_path):
    inst = Instance.create(tmp_path)
    outcome = runner.Outcome(program_code=7, qemu_stopped="quit")
    assert runner.exit_status(outcome, inst, runner.RunOptions(command=("true",))) == 7


# --- which program a systemd-mode run hands to the agent ------------------------------

DEBIAN = ["/sbin/init"]


@pytest.mark.parametrize("user, image, mode, expected", [
    (("sh", "-c", "exit 7"), DEBIAN, "auto", (("sh", "-c", "exit 7"), ())),        # exec mode
    (("sh", "-c", "exit 7"), DEBIAN, "exec", (("sh", "-c", "exit 7"), ())),
    (("sh", "-c", "exit 7"), DEBIAN, "systemd", (("/sbin/init",), ("sh", "-c", "exit 7"))),
    (("/sbin/my-init",), None, "systemd", (("/sbin/my-init",), ())),   # no image init: CMD is
    ((), DEBIAN, "auto", (("/sbin/init",), ())),                    # the init, no program
    (("/lib/systemd/systemd",), DEBIAN, "systemd", (("/lib/systemd/systemd",), ())),
])
def test_split_run(user, image, mode, expected):
    assert initmode.split_run(user, image, mode) == expected


def test_plan_boots_the_init_and_keeps_the_program():
    opts, program = runner.plan(runner.RunOptions(command=("sh", "-c", "exit 7"), base="debian",
                                                  init_mode="systemd"))
    assert (opts.command, opts.init_mode, program) == (("/sbin/init",), "systemd",
                                                       ("sh", "-c", "exit 7"))


@pytest.mark.parametrize("opts, message", [
    (runner.RunOptions(base="debian"), "nothing to run: /sbin/init is the guest's init"),
    (runner.RunOptions(command=("true",), base="debian", init_mode="systemd", agent="none"),
     "--agent none: a systemd-mode run needs the agent"),
])
def test_plan_refuses_a_systemd_run_without_a_program(opts, message):
    with pytest.raises(KindlingError, match=message):
        runner.plan(opts)
