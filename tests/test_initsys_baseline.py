"""The `baseline` boot strategy's deliberately naive parts (initsys/agent_gate.py,
initsys/headers_launch.py): readiness by polling the ready file every 100 ms, and
waiting for the kernel-headers worker, whose failure does not stop the boot."""

import os
import subprocess
import sys
import time

import pytest
import trio
import trio.testing

from initsys import agent_gate, headers_launch, helpers
from initsys.reaper import Reaper


class FakeHelper:
    def __init__(self):
        self.sent = None

    def release(self, data):
        self.sent = data


def gate():
    """An AgentProcess without a process: a fake helper and a real readiness pipe."""
    agent = object.__new__(agent_gate.AgentProcess)
    agent.helper = FakeHelper()
    agent._ready_r, agent.ready_w = os.pipe2(os.O_CLOEXEC)
    return agent


def ready_file(root):
    return root / agent_gate.READY_FILE.lstrip("/")


async def test_poll_sees_the_ready_file_at_the_next_100ms_tick(tmp_path, autojump_clock):
    agent = gate()
    os.write(agent.ready_w, b"R")       # the byte is there at once: the baseline ignores it

    async def agent_writes_file_late():
        await trio.sleep(0.25)
        ready_file(tmp_path).parent.mkdir(parents=True)
        ready_file(tmp_path).write_text("ts\n")

    async with trio.open_nursery() as n:
        n.start_soon(agent_writes_file_late)
        start = trio.current_time()
        with trio.fail_after(20):
            await agent.release_and_poll(str(tmp_path), {"A": "1"}, {"transport": "serial"})
        assert trio.current_time() - start == pytest.approx(0.3)   # polls at 0, 0.1, 0.2, 0.3
    assert b'"root"' in agent.helper.sent
    with pytest.raises(OSError):
        os.fstat(agent._ready_r)        # closed once the file was seen
    os.close(agent.ready_w)


async def test_poll_gives_up_after_the_same_30s_limit(tmp_path, autojump_clock):
    agent = gate()
    start = trio.current_time()
    with pytest.raises(agent_gate.AgentFailed, match="agent.ready did not appear within 30 s"):
        with trio.fail_after(120):
            await agent.release_and_poll(str(tmp_path), {}, {"transport": "serial"})
    assert trio.current_time() - start == pytest.approx(agent_gate.READY_TIMEOUT, abs=0.11)
    os.close(agent.ready_w)
    os.close(agent._ready_r)


def tracked_child(reaper, code):
    with reaper.spawning_sync():
        popen = subprocess.Popen([sys.executable, "-c", f"import time, sys; time.sleep(0.2); sys.exit({code})"],
                                 stdin=subprocess.DEVNULL)
        reaper.track(popen.pid)
    return helpers.Helper("headers", popen, time.monotonic())


async def test_headers_wait_returns_when_the_worker_exits_and_reaps_it():
    reaper = Reaper()
    worker = tracked_child(reaper, 0)
    with trio.fail_after(30):
        await headers_launch.wait(reaper, worker)
    assert worker.popen.returncode == 0
    assert worker.popen.pid not in reaper.tracked


async def test_a_failed_headers_worker_does_not_stop_the_boot(capfd):
    reaper = Reaper()
    worker = tracked_child(reaper, 1)
    with trio.fail_after(30):
        await headers_launch.wait(reaper, worker)     # no exception
    assert worker.popen.returncode == 1
    assert "kindling: kernel-headers worker: headers helper exited with 1" in capfd.readouterr().out
