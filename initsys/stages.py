"""Staged concurrent setup after the root and the config: volumes and network.

The order lives here, in `plan()`:

    volumes   after: nothing
    network   after: nothing -- or after `volumes` when a volume is mounted at
              /, /etc or below /etc (resolv.conf would race with the mount)
    nfs       after: network (the export is reached over eth0), and volumes
              (an NFS path may lie inside a disk volume)

Strategies (config.json `boot_strategy`; `kindling_strategy=` on the kernel
command line overrides it):

    concurrent  (default) every stage starts as soon as its dependencies are
                done, in one trio nursery
    sequential  the same stages one after another in plan order (volumes
                first), for debugging ordering problems
    baseline    the benchmarks' "before" (bench/create_running.py): network,
                then volumes, one after another -- the order of the seed
                implementation; PID 1 also waits for the headers worker and
                polls the agent's ready file (initsys/boot.py, agent_gate.py)

Every stage prints its KINDLING-STAGE line; a failure names its stage in the
KINDLING-FATAL line.  The network stage waits for the network helper
(initsys/network_helper.py), which the setup thread may have launched already.
"""

import os

from initsys import volumes
from initsys.failure import BootFailed
from initsys.timeline import Stage

VOLUME_TIMEOUT = 10.0
NFS_TIMEOUT = 60.0     # a hard NFS mount of an unreachable server never returns by itself


def shadows_etc(path):
    path = os.path.normpath(path)
    return path in ("/", "/etc") or path.startswith("/etc/")


def volumes_first(cfg):
    return any(shadows_etc(v.path) for v in volumes.on_disks(cfg.volume_mounts))


def plan(cfg):
    """[(stage, dependencies)] in a valid sequential order."""
    stages = []
    on_disks = bool(volumes.on_disks(cfg.volume_mounts))
    if on_disks:
        stages.append(("volumes", ()))
    if cfg.network_enabled:
        stages.append(("network", ("volumes",) if volumes_first(cfg) else ()))
    if volumes.over_nfs(cfg.volume_mounts):       # validation: only with network_enabled
        stages.append(("nfs", ("network", "volumes") if on_disks else ("network",)))
    return stages


def sequence(cfg, strategy):
    """The stage names in the order a one-at-a-time strategy runs them."""
    names = [name for name, _ in plan(cfg)]
    # baseline: network first, as the seed did -- but the /etc rule still wins: with a
    # volume at /, /etc or below /etc the volumes must be mounted before the network
    # stage writes resolv.conf and hosts, or the mount would hide (or race with) them
    if strategy == "baseline" and not volumes_first(cfg):
        names.sort(key=("network", "volumes", "nfs").index)
    return names


def strategy_of(cfg, environ=os.environ):
    """The kernel argument `kindling_strategy=` if given, else config.json's `boot_strategy`."""
    from initsys.protocol import STRATEGIES

    strategy = environ.get("kindling_strategy") or cfg.boot_strategy
    if strategy not in STRATEGIES:
        raise ValueError(f"kernel argument kindling_strategy={strategy}: expected one of "
                         f"{', '.join(STRATEGIES)}")
    return strategy


def network_starts_early(cfg, strategy):
    """Whether the network helper may be launched as soon as the config is read (from
    the setup thread, while PID 1 still imports trio): it waits for nothing."""
    return strategy == "concurrent" and ("network", ()) in plan(cfg)


async def volume_stage(cfg, newroot):
    import trio

    from initsys.devices import wait_for_disks

    missing = await wait_for_disks(volumes.device_names(cfg.volume_mounts), VOLUME_TIMEOUT)
    if missing:
        raise volumes.VolumeError(f"volume devices not found within {VOLUME_TIMEOUT:.0f} s: "
                                  + ", ".join(f"/dev/{name}" for name in missing))
    # mount(2) blocks (journal checks, device I/O): keep it off the event loop
    await trio.to_thread.run_sync(volumes.mount_all, cfg.volume_mounts, newroot)
    if any(os.path.normpath(v.path) == "/" for v in cfg.volume_mounts):
        from initsys.mounts import bind_into_newroot
        bind_into_newroot(newroot)  # a volume over / hides the first bind mounts


async def nfs_stage(cfg, newroot):
    import trio

    import time

    deadline = time.monotonic() + NFS_TIMEOUT
    with trio.move_on_after(NFS_TIMEOUT + 1) as scope:
        # abandoned on timeout (a hard mount that hangs): the boot then fails and powers off
        await trio.to_thread.run_sync(volumes.mount_nfs, cfg.volume_mounts, newroot, cfg.guest_ip,
                                      deadline, abandon_on_cancel=True)
    if scope.cancelled_caught:
        servers = ", ".join(sorted({v.nfs_host for v in volumes.over_nfs(cfg.volume_mounts)}))
        raise volumes.VolumeError(f"NFS volumes not mounted within {NFS_TIMEOUT:.0f} s "
                                  f"(server {servers} unreachable?)")


async def _run_stage(name, cfg, newroot, network, timings):
    with Stage(name) as stage:
        if name == "volumes":
            await volume_stage(cfg, newroot)
        elif name == "nfs":
            await nfs_stage(cfg, newroot)
        else:
            await network.finish()
            stage.start = min(stage.start, network.started)  # its work began when launched
    timings[name] = (stage.start, stage.end)


async def run(cfg, newroot, network, strategy="concurrent"):
    """Run the planned stages; returns {stage: (start, end)} on the guest clock.
    `network`: the NetworkHelper, settled with this config.  A failure raises the
    BootFailed of the first stage that failed (never a group: the others are cancelled)."""
    import trio  # not at the top: the setup thread imports this module while trio loads

    timings = {}
    if strategy != "concurrent":
        for name in sequence(cfg, strategy):
            await _run_stage(name, cfg, newroot, network, timings)
        return timings
    stages = plan(cfg)
    done = {name: trio.Event() for name, _ in stages}
    failures = []

    async def one(name, after):
        for dep in after:
            await done[dep].wait()
        try:
            await _run_stage(name, cfg, newroot, network, timings)
        except BootFailed as e:  # the first failure ends the others
            failures.append(e)
            nursery.cancel_scope.cancel()
        done[name].set()

    async with trio.open_nursery() as nursery:
        for name, after in stages:
            nursery.start_soon(one, name, after)
    if failures:
        raise failures[0]
    return timings
