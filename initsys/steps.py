"""Running the boot's steps.  The list itself -- every stage in order, and where
each runs -- is initsys/main.py's `steps()`; this module runs such a list.

Where a step runs:

    MAIN   on PID 1's main thread, in order
    SETUP  a run of SETUP steps goes, in order, to one plain thread started at
           the first of them; the main thread goes on at once (a TRIO step
           `joins` the thread later)
    TRIO   in order, inside the boot's one `trio.run`, beside what
           `Boot.start_background` starts (the reaper, the agent's reaping).  The
           first run of TRIO steps with a step wanted starts it, and every step up
           to the last TRIO step runs inside it: MAIN steps then on the trio
           thread, its loop blocked while they run (a template's boot starts trio
           before its checkpoint, so a clone does not pay trio's start: ~0.4 s of
           guest time after the restore, under TCG)

Every step runs inside a `timeline.Stage` of its name (its KINDLING-STAGE line
and, on error, its BootFailed), unless its name is a tuple: then the step times
and names its stages itself (the concurrent `volumes` and `network`, the
`kernel` and `python` stages measured from the kernel log).  A step with a
`when` runs only if `when()` is true when the step comes.

Why a thread for the ordered setup.  Under TCG, Python imports are the boot
budget (ENVIRONMENT.md): `import trio` alone costs ~0.9 s of guest CPU, and
nothing before the program needs trio.  The ordered basic setup -- load the
module closure, wait for the disks, assemble the overlay root, read the
config, bind mounts -- is almost all kernel work (finit_module, mount, uevent
waits) done with the GIL released.  So it runs, in order, in one plain thread
started right after the API mounts, while the main thread imports trio; with
two vCPUs the two really overlap.  (Its first step, the module closure, begins
even earlier: /init starts it in a thread of its own, initsys/preload.py, and the
`modules` step joins that.)  Alternatives weighed: (a) everything in
trio after the import -- simplest, but the ~0.5 s of setup then comes after
the ~0.9 s import instead of under it; (b) a separate process for the setup --
it would pay its own interpreter start (~0.2 s) and need IPC for the config.
The thread only touches the filesystem and the kernel; it hands its results
(disks, config) to trio through the shared `Boot`.  The device wait stays
event-driven: the thread sleeps in poll() on the uevent socket.

Written here rather than taken from a library: a dozen lines, and PID 1 can
afford no import on this path.
"""

import itertools
import threading

from initsys import timeline
from initsys.failure import BootFailed
from initsys.timeline import Stage

MAIN, SETUP, TRIO = "main", "setup", "trio"


class Step:
    __slots__ = ("where", "name", "action", "when", "line")

    def __init__(self, where, name, action, when=None, line=True):
        self.where = where
        self.name = name        # a stage name, or a tuple of the names the action prints
        self.action = action
        self.when = when
        self.line = line        # False: named in FATAL lines only, no KINDLING-STAGE line

    def wanted(self):
        return self.when is None or self.when()

    def run(self):
        if not self.wanted():
            return
        if isinstance(self.name, tuple):
            self.action()
            return
        with Stage(self.name, line=self.line):
            self.action()

    async def run_async(self):
        if not self.wanted():
            return
        if isinstance(self.name, tuple):
            await self.action()
            return
        with Stage(self.name, line=self.line):
            await self.action()


class SetupThread(threading.Thread):
    """Runs its steps in order; an error ends them and waits in `error` for the join.
    It may be started before it is given them (`give`): a template's boot starts it
    before the checkpoint, so that a clone does not pay for a thread's start (~0.1 s
    of guest time right after the restore, under TCG) on its critical path."""

    def __init__(self):
        super().__init__(name="setup", daemon=True)
        self.steps = ()
        self.error = None
        self._given = threading.Event()

    def give(self, steps):
        self.steps = steps
        self._given.set()

    def run(self):
        self._given.wait()
        try:
            for step in self.steps:
                step.run()
        except BootFailed as e:
            self.error = e
        except BaseException as e:  # handed to the main thread, never lost
            self.error = BootFailed(timeline.current(), e)


def run(steps, boot):
    """Run `steps` (see the module docstring); the setup thread goes to `boot.setup`.
    The first run of TRIO steps with a wanted step starts the one `trio.run`, which runs
    every step up to the last TRIO step: MAIN steps among them on the trio thread
    (briefly blocking its loop), SETUP runs given to the thread as before."""
    groups = [(where, list(group)) for where, group in itertools.groupby(steps, key=lambda step: step.where)]
    last_trio = max((i for i, (where, _) in enumerate(groups) if where == TRIO), default=-1)
    i = 0
    while i < len(groups):
        where, group = groups[i]
        if where == TRIO and any(step.wanted() for step in group):
            import trio  # imported by an earlier MAIN step
            trio.run(_in_trio, boot, groups[i:last_trio + 1])
            i = last_trio
        elif where != TRIO:
            _run_group(where, group, boot)
        i += 1


def _run_group(where, group, boot):
    if where == SETUP:
        if boot.setup is None:
            boot.setup = SetupThread()
            boot.setup.start()
        boot.setup.give(group)
    else:
        for step in group:
            step.run()


async def _in_trio(boot, groups):
    import trio

    async with trio.open_nursery() as nursery:
        await boot.start_background(nursery)
        for where, group in groups:
            if where != TRIO:
                _run_group(where, group, boot)
                continue
            for step in group:
                await step.run_async()
        nursery.cancel_scope.cancel()
