"""PID 1's helper processes (the network stage): started from the initrd's own
Python with the interpreter flags PID 1 has, tracked by the reaper so their
exit status is never stolen, and bounded by a timeout at the call site.
"""

import os
import subprocess
import sys

import initsys

LIB = os.path.dirname(os.path.dirname(os.path.abspath(initsys.__file__)))
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from initsys import {module} as m; sys.exit(m.main(sys.argv[2:]))")


def helper_argv(module, *args):
    flags = "-IS" if sys.flags.no_site else "-I"
    return [sys.executable, flags, "-c", _BOOT.format(module=module), LIB, *args]


class HelperFailed(OSError):
    pass


async def run_helper(reaper, module, *args, timeout):
    """Run `initsys.<module>.main(args)` in a child process; raise HelperFailed
    with its stderr when it fails or outlives `timeout` seconds."""
    import trio

    async with reaper.spawning():
        proc = await trio.lowlevel.open_process(
            helper_argv(module, *args), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        reaper.track(proc.pid)
    err = bytearray()
    try:
        with trio.move_on_after(timeout) as scope:
            while chunk := await proc.stderr.receive_some(4096):
                if len(err) < 65536:
                    err += chunk
            await proc.wait()
        if scope.cancelled_caught:
            proc.kill()
            await proc.wait()
            raise HelperFailed(f"{module} helper did not finish within {timeout:.0f} s")
    finally:
        reaper.untrack(proc.pid)
        await proc.stderr.aclose()
    if proc.returncode != 0:
        text = err.decode("utf-8", "replace").strip().splitlines()
        raise HelperFailed(text[-1] if text else f"{module} helper exited with {proc.returncode}")
