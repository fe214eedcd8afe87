"""initsys/program.py run(): the signal receiver is open before the program is spawned,
so a signal PID 1 gets in the program's first instant -- here while `after_start` (the
headers worker's launch) runs, before the forwarding task exists -- reaches the program.

On the host: the spawn is a plain child of the test (no chroot, no new root), SIGHUP
stands in for SIGTERM (ignored beforehand, so that without a receiver it is dropped --
the test fails cleanly -- instead of ending pytest), and the reaper is a stub (the real
one would reap the test runner's other children)."""

import os
import signal
import types

import trio

from initsys import program, protocol

CHILD = "trap 'exit 5' HUP; echo ready; i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; exit 9"


def test_a_signal_before_the_forwarder_runs_still_reaches_the_program(monkeypatch):
    monkeypatch.setattr(program, "FORWARDED_SIGNALS", (signal.SIGHUP,))
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    order = []
    procs = []

    async def fake_start(cfg, reaper):
        proc = await trio.lowlevel.open_process(["sh", "-c", CHILD], stdout=-1)
        procs.append(proc)
        order.append("started")
        return proc, None

    async def after_start():
        assert await procs[0].stdout.receive_some(16) == b"ready\n"     # its trap is set
        os.kill(os.getpid(), signal.SIGHUP)                                # PID 1 gets it now
        order.append("after_start")

    monkeypatch.setattr(program, "_start", fake_start)
    reaper = types.SimpleNamespace(untrack=lambda pid: None, sweep=lambda: None)
    cfg = protocol.validate_config({"entrypoint": ["/bin/true"]})
    try:
        code, _ = trio.run(program.run, cfg, reaper, after_start)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert order == ["started", "after_start"]
    assert code == 5
