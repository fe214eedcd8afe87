"""initsys/network_helper.py: the one owner of the network helper, its states, and
the kindling_net=1 prestart hint (config.json's network_enabled still decides)."""

import json
import sys
import time

import pytest
import trio

from initsys import helpers, network_helper, protocol
from initsys.network_helper import NetworkHelper
from initsys.reaper import Reaper

NET = {"network_enabled": True, "guest_ip": "10.0.0.2", "guest_cidr": 24}


def cfg(**fields):
    return protocol.validate_config({"entrypoint": ["/bin/true"], **fields})


# The helper's stand-in: deferred, it reads its go pipe and exits 7 when that was closed
# unwritten (not wanted), 0 when it got its work; with arguments it exits 0.
CHILD = """import os, sys
if sys.argv[1:2] == ['--go-fd']:
    sys.exit(0 if os.read(int(sys.argv[2]), 65536) else 7)
"""


@pytest.fixture
def launches(monkeypatch):
    """The helpers launched, as (module, args); each runs CHILD."""
    seen = []

    def argv(module, *args):
        seen.append((module, args))
        return [sys.executable, "-c", CHILD, *args]
    monkeypatch.setattr(helpers, "helper_argv", argv)
    return seen


def test_the_hint_is_kindling_net_1_only():
    from initsys.boot import Boot
    assert Boot(0.0, {"kindling_net": "1"}).network_hinted()
    assert not Boot(0.0, {"kindling_net": "0"}).network_hinted()
    assert not Boot(0.0, {}).network_hinted()


def test_a_prestarted_helper_is_cancelled_when_the_config_does_not_want_it(launches):
    net = NetworkHelper(Reaper(), "/newroot")
    net.prestart()
    assert net.state == network_helper.PRESTARTED
    popen = net._helper.popen
    net.settle(cfg(), launch_now=True)
    assert net.state == network_helper.NOT_NEEDED
    assert popen.wait(timeout=30) == 7          # its go pipe closed unwritten: it exits


def test_a_prestarted_helper_gets_its_settings_when_launched_early(launches):
    net = NetworkHelper(Reaper(), "/newroot")
    net.prestart()
    net.settle(cfg(**NET), launch_now=True)
    assert net.state == network_helper.LAUNCHED
    assert net._helper.popen.wait(timeout=30) == 0
    assert [args[0] for _, args in launches] == ["--go-fd"]


def test_without_the_hint_the_helper_starts_with_its_arguments_when_the_stage_comes(launches):
    reaper = Reaper()
    net = NetworkHelper(reaper, "/newroot")
    net.settle(cfg(**NET, hostname="g"), launch_now=False)   # must wait (volumes first)
    assert net.state == network_helper.IDLE and launches == []

    async def stage():
        async with trio.open_nursery() as nursery:
            await nursery.start(reaper.run)
            with trio.fail_after(30):
                await net.finish()
            nursery.cancel_scope.cancel()
    trio.run(stage)
    assert net.state == network_helper.CONFIGURED
    ((module, (root, settings)),) = launches
    assert (module, root) == ("network", "/newroot")
    assert json.loads(settings)["hostname"] == "g"
    assert net.started <= time.monotonic()


def test_a_failing_helper_is_failed_and_says_why(monkeypatch):
    reaper = Reaper()
    monkeypatch.setattr(helpers, "helper_argv", lambda module, *a: [
        sys.executable, "-c", "import sys; sys.stderr.write('eth0 did not appear\\n'); sys.exit(1)"])
    net = NetworkHelper(reaper, "/newroot")
    net.settle(cfg(**NET), launch_now=True)

    async def stage():
        with trio.fail_after(30):
            await net.finish()
    with pytest.raises(helpers.HelperFailed, match="eth0 did not appear"):
        trio.run(stage)
    assert net.state == network_helper.FAILED


def test_a_helper_cannot_be_prestarted_twice(launches):
    net = NetworkHelper(Reaper(), "/newroot")
    net.prestart()
    with pytest.raises(RuntimeError, match="network helper is prestarted, expected idle"):
        net.prestart()
    net.settle(cfg(), launch_now=False)
    assert net._helper.popen.wait(timeout=30) == 7
