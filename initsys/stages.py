"""Staged concurrent setup after the root and the config: volumes and network.

The order lives here, in `plan()`:

    volumes   after: nothing
    network   after: nothing -- or after `volumes` when a volume is mounted at
              /, /etc or below /etc (resolv.conf would race with the mount)

Strategies (config.json `boot_strategy`; `kindling_strategy=` on the kernel
command line overrides it):

    concurrent  (default) every stage starts as soon as its dependencies are
                done, in one trio nursery
    sequential  the same stages one after another in plan order (volumes
                first), for debugging ordering problems
    baseline    the benchmarks' "before" (bench/create_running.py): network,
                then volumes, one after another -- the order of the seed
                implementation; PID 1 also waits for the headers worker and
                polls the agent's ready file (initsys/main.py, agent_gate.py)

Every stage prints its KINDLING-STAGE line; a failure names its stage in the
KINDLING-FATAL line.
"""

import os
import time

from initsys import helpers, volumes
from initsys.timeline import record

NETWORK_TIMEOUT = 30.0
VOLUME_TIMEOUT = 10.0


class StageFailed(Exception):
    def __init__(self, stage, error):
        from initsys.main import describe
        super().__init__(describe(error))
        self.stage = stage


def shadows_etc(path):
    path = os.path.normpath(path)
    return path in ("/", "/etc") or path.startswith("/etc/")


def volumes_first(cfg):
    return any(shadows_etc(v.path) for v in cfg.volume_mounts)


def plan(cfg):
    """[(stage, dependencies)] in a valid sequential order."""
    stages = []
    if cfg.volume_mounts:
        stages.append(("volumes", ()))
    if cfg.network_enabled:
        stages.append(("network", ("volumes",) if volumes_first(cfg) else ()))
    return stages


def sequence(cfg, strategy):
    """The stage names in the order a one-at-a-time strategy runs them."""
    names = [name for name, _ in plan(cfg)]
    # baseline: network first, as the seed did -- but the /etc rule still wins: with a
    # volume at /, /etc or below /etc the volumes must be mounted before the network
    # stage writes resolv.conf and hosts, or the mount would hide (or race with) them
    if strategy == "baseline" and not volumes_first(cfg):
        names.sort(key=("network", "volumes").index)
    return names


def strategy_of(cfg, environ=os.environ):
    """The kernel argument `kindling_strategy=` if given, else config.json's `boot_strategy`."""
    from initsys.protocol import STRATEGIES

    strategy = environ.get("kindling_strategy") or cfg.boot_strategy
    if strategy not in STRATEGIES:
        raise ValueError(f"kernel argument kindling_strategy={strategy}: expected one of "
                         f"{', '.join(STRATEGIES)}")
    return strategy


async def volume_stage(cfg, reaper, newroot, launched=None):
    import trio

    from initsys.devices import BlockWatcher

    watcher = BlockWatcher()
    names = volumes.device_names(cfg.volume_mounts)
    with trio.move_on_after(VOLUME_TIMEOUT) as scope:
        await watcher.wait_for_names(names)
    if scope.cancelled_caught:
        missing = [f"/dev/{n}" for n in names if n not in watcher.disks]
        raise volumes.VolumeError(f"volume devices not found within {VOLUME_TIMEOUT:.0f} s: {', '.join(missing)}")
    # mount(2) blocks (journal checks, device I/O): keep it off the event loop
    await trio.to_thread.run_sync(volumes.mount_all, cfg.volume_mounts, newroot)
    if any(os.path.normpath(v.path) == "/" for v in cfg.volume_mounts):
        from initsys.mounts import bind_into_newroot
        bind_into_newroot(newroot)  # a volume over / hides the first bind mounts


def launch_network_early(cfg, reaper, newroot, prestarted=None):
    """The network helper can start as soon as the config is read -- from the setup
    thread, while PID 1 still imports trio -- unless it must wait for the volumes.
    Its Python start-up and pyroute2 import (~1 s under TCG) then overlap the rest
    of the boot; the network stage only waits for it.  With `prestarted` (a deferred
    helper PID 1 started at boot because the host said `kindling_net=1`), the imports
    are done already and it is only released.  Returns the Helper for the stage, or None."""
    if not cfg.network_enabled:
        if prestarted is not None:
            prestarted.cancel(reaper)
        return None
    if ("network", ("volumes",)) in plan(cfg):
        return prestarted  # released by the network stage, after the volumes
    if prestarted is not None:
        prestarted.release(_go_data(cfg, newroot))
        return prestarted
    return helpers.launch(reaper, "network", *network_args(cfg, newroot))


def _go_data(cfg, newroot):
    import json

    root, settings = network_args(cfg, newroot)
    return json.dumps([root, json.loads(settings)]).encode()


def network_args(cfg, newroot):
    import json

    from initsys.network import settings_of
    return newroot, json.dumps(settings_of(cfg))


async def network_stage(cfg, reaper, newroot, launched=None):
    if launched is None:
        await helpers.run_helper(reaper, "network", *network_args(cfg, newroot), timeout=NETWORK_TIMEOUT)
        return
    if not launched.released:
        launched.release(_go_data(cfg, newroot))
    await helpers.finish(reaper, launched, timeout=NETWORK_TIMEOUT)


RUNNERS = {"volumes": volume_stage, "network": network_stage}


async def _run_stage(name, cfg, reaper, newroot, timings, launched):
    helper = launched.get(name)
    start = time.monotonic()
    try:
        await RUNNERS[name](cfg, reaper, newroot, helper)
        if helper is not None:
            start = min(start, helper.started)  # its work began when it was released
    except Exception as e:
        raise StageFailed(name, e) from None
    end = time.monotonic()
    timings[name] = (start, end)
    record(name, start, end)


async def run(cfg, reaper, newroot, strategy="concurrent", launched=None):
    """Run the planned stages; returns {stage: (start, end)} on the guest clock.

    `launched`: {stage: Helper} already started early (launch_network_early).
    """
    import trio  # not at the top: the setup thread imports this module while trio loads

    timings = {}
    launched = launched or {}
    if strategy != "concurrent":
        for name in sequence(cfg, strategy):
            await _run_stage(name, cfg, reaper, newroot, timings, launched)
        return timings
    stages = plan(cfg)
    done = {name: trio.Event() for name, _ in stages}

    async def one(name, after):
        for dep in after:
            await done[dep].wait()
        await _run_stage(name, cfg, reaper, newroot, timings, launched)
        done[name].set()

    try:
        async with trio.open_nursery() as nursery:
            for name, after in stages:
                nursery.start_soon(one, name, after)
    except BaseExceptionGroup as group:
        first = _first_leaf(group)
        if isinstance(first, StageFailed):
            raise first from None
        raise
    return timings


def _first_leaf(exc):
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
