"""PID 1's side of the network stage: the one object that owns the network helper.

The helper (initsys/network.py, a process of its own) spends ~1 s under TCG
importing pyroute2, so PID 1 starts it as early as it can and only waits for it
in the network stage.  Whether the network is wanted is said once, by
config.json's `network_enabled`.  The host may add a hint, the kernel argument
`kindling_net=1` (docs/protocol.md §1), which only lets the helper start at the
very beginning of the boot -- before config.json is read -- so that its imports
overlap PID 1's `import trio` (initsys/boot.py reads it); the config still
decides, and a prestarted helper that the config does not want is cancelled.
Measured (`kindling run --net -- true`, one A/B pair on a host at load ~13, so
every guest stage ran slow): with the hint the network stage ended 1.5 s after
`setup-join` (the agent waited for it that long); without it, 10.9 s after --
its pyroute2 import then starts only once the config is read.

States and the calls that move between them:

    idle        --prestart()-->       prestarted  (importing; its work not known yet)
    idle|prestarted --settle(cfg)-->  not-needed  (network_enabled is false; cancelled)
    idle|prestarted --launch()-->     launched    (working on the settings)
    launched    --await finish()-->   configured | failed

`settle` runs in the setup thread as soon as the config is known and launches
the helper right away unless the stage must wait (the volumes first, or a
one-at-a-time strategy); the network stage launches it otherwise.
"""

from initsys import helpers

NETWORK_TIMEOUT = 30.0
IDLE, PRESTARTED, NOT_NEEDED, LAUNCHED, CONFIGURED, FAILED = (
    "idle", "prestarted", "not-needed", "launched", "configured", "failed")


class NetworkHelper:
    def __init__(self, reaper, newroot):
        self.reaper = reaper
        self.newroot = newroot
        self.state = IDLE
        self.cfg = None
        self._helper = None

    @property
    def started(self):
        """When its work began (guest clock), or None before `launch`."""
        return self._helper.started if self.state in (LAUNCHED, CONFIGURED, FAILED) else None

    def prestart(self):
        """Start the helper on the hint alone: it imports, then waits for its work."""
        self._expect(IDLE)
        self._helper = helpers.launch(self.reaper, "network", deferred=True, reports=True)
        self.state = PRESTARTED

    def settle(self, cfg, launch_now):
        """The config is known: cancel the helper if not wanted, else launch it now if
        `launch_now` (the network stage need not wait for anything)."""
        self.cfg = cfg
        if not cfg.network_enabled:
            if self.state == PRESTARTED:
                self._helper.cancel(self.reaper)
            self.state = NOT_NEEDED
        elif launch_now:
            self.launch()

    def launch(self):
        """Hand the helper its settings (starting it when not prestarted)."""
        settings = settings_json(self.cfg)
        if self.state == PRESTARTED:
            self._helper.release(settings.encode())
        else:
            self._expect(IDLE)
            self._helper = helpers.launch(self.reaper, "network", settings, reports=True)
        self.state = LAUNCHED

    async def finish(self):
        """The network stage: launch if not yet, wait for the helper (30 s from its
        start), then write the resolver files into the new root (the helper only
        talks netlink: initsys/network.py).  Raises helpers.HelperFailed with the
        helper's own message."""
        import trio

        if self.state in (IDLE, PRESTARTED):
            await trio.to_thread.run_sync(self.launch)  # fork+exec: off the event loop
        self._expect(LAUNCHED)
        try:
            await helpers.finish(self.reaper, self._helper, timeout=NETWORK_TIMEOUT)
        except BaseException:
            self.state = FAILED
            raise
        from initsys.network import settings_of, write_resolver_files
        write_resolver_files(settings_of(self.cfg), self.newroot)
        self.state = CONFIGURED

    def _expect(self, *states):
        if self.state not in states:
            raise RuntimeError(f"network helper is {self.state}, expected {' or '.join(states)}")


def settings_json(cfg):
    import json

    from initsys.network import settings_of
    return json.dumps(settings_of(cfg))

