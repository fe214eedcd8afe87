"""The orphan reaper, with real processes on the host.

The test runs the reaper in a child Python process that is made a *child
subreaper* (prctl PR_SET_CHILD_SUBREAPER), so orphans are re-parented to it
exactly as they are to PID 1 in the guest.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(r"""
    import ctypes, json, os, sys
    import trio
    sys.path.insert(0, sys.argv[1])
    from initsys.reaper import Reaper

    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def zombies():
        out = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                stat = open(f"/proc/{pid}/stat").read()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and stat.rsplit(")", 1)[1].split()[0] == "Z":
                out.append(int(pid))
        return out

    ORPHANS = 10 * 20

    async def main():
        reaper = Reaper()
        codes = []
        async with trio.open_nursery() as nursery:
            await nursery.start(reaper.run)
            async def one(i):
                async with reaper.spawning():
                    # the program itself leaves 20 orphans that exit a little later
                    proc = await trio.lowlevel.open_process(
                        ["sh", "-c", f"for j in $(seq 20); do (sleep 0.2 &); done; exit {i}"])
                    reaper.track(proc.pid)
                await proc.wait()
                reaper.untrack(proc.pid)
                codes.append((i, proc.returncode))
            async with trio.open_nursery() as inner:
                for i in range(10):
                    inner.start_soon(one, i)
            reaper.sweep()          # as an owner does after reaping its tracked child
            # the orphans exit later; each SIGCHLD makes the reaper sweep them up
            with trio.move_on_after(20):
                while reaper.reaped < ORPHANS:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        print(json.dumps({"codes": sorted(codes), "zombies": zombies(), "reaped": reaper.reaped}))

    trio.run(main)
""")


def test_reaper_reaps_orphans_and_keeps_exit_codes_exact():
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    result = json.loads(out)
    assert result["codes"] == [[i, i] for i in range(10)]
    assert result["zombies"] == []
    assert result["reaped"] == 200
