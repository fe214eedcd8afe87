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


def test_without_the_hint_the_helper_starts_with_its_arguments_when_the_stage_comes(launches, tmp_path):
    reaper = Reaper()
    net = NetworkHelper(reaper, str(tmp_path))
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
    ((module, (settings,)),) = launches          # the settings only: the helper writes no file
    assert module == "network"
    assert json.loads(settings)["hostname"] == "g"
    assert net.started <= time.monotonic()
    # PID 1 writes the resolver files into the root once the helper is done
    assert (tmp_path / "etc" / "hostname").read_text() == "g\n"
    assert "127.0.1.1\tg" in (tmp_path / "etc" / "hosts").read_text()


def test_a_prestarted_helper_gets_the_settings_json_on_its_go_pipe(monkeypatch, tmp_path):
    """What the deferred helper reads from its go pipe: exactly the settings JSON."""
    out = tmp_path / "go"
    child = "import os, sys; open(os.environ['GO_OUT'], 'wb').write(os.read(int(sys.argv[2]), 65536))"
    monkeypatch.setenv("GO_OUT", str(out))
    monkeypatch.setattr(helpers, "helper_argv", lambda module, *args: [sys.executable, "-c", child, *args])
    net = NetworkHelper(Reaper(), "/newroot")
    net.prestart()
    net.settle(cfg(**NET, hostname="h"), launch_now=True)
    assert net._helper.popen.wait(timeout=30) == 0
    assert json.loads(out.read_bytes()) == {"guest_ip": "10.0.0.2", "guest_cidr": 24, "guest_gw": None,
                                            "guest_dns": None, "hostname": "h", "mtu": None, "hosts": {}}


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


PROBE = """import atexit, sys
EXIT_AT_ONCE = {at_once}
def main(argv):
    atexit.register(lambda: print("teardown", flush=True))
    print("main", argv[0])
    return 3
"""


@pytest.mark.parametrize("at_once, out", [(True, "main x\n"), (False, "main x\nteardown\n")])
def test_a_helper_that_exits_at_once_skips_the_interpreter_teardown(tmp_path, monkeypatch, at_once, out):
    """helpers._BOOT: an EXIT_AT_ONCE module's process ends after main (output flushed,
    its status kept) without atexit/teardown; others end normally.  The probe module
    stands in for initsys.network (whose main needs a guest's netlink)."""
    import subprocess
    (tmp_path / "initsys").mkdir()
    (tmp_path / "initsys" / "__init__.py").write_text("")
    (tmp_path / "initsys" / "probe.py").write_text(PROBE.format(at_once=at_once))
    monkeypatch.setattr(helpers, "LIB", str(tmp_path))
    done = subprocess.run(helpers.helper_argv("probe", "x"), capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (3, out)


def test_a_link_that_is_there_costs_no_uevent_monitor(tmp_path, monkeypatch):
    from initsys import devices
    (tmp_path / "class" / "net" / "eth0").mkdir(parents=True)
    made = []
    monkeypatch.setattr(devices, "LinkWatcher", lambda: made.append(1) or pytest.fail("monitor made"))
    assert devices.wait_for_link("eth0", 5, sysfs=str(tmp_path)) and made == []


def test_a_reporting_helper_is_done_when_it_says_so_and_reaped_when_it_exits(monkeypatch):
    """helpers.DONE: finish() returns on the helper's word, while its process still runs
    (its exit, an interpreter's teardown, is off the boot's path); a system task reaps
    it once it exits, so the reaper is never left with a tracked zombie."""
    child = ("import os, sys; from initsys import helpers; helpers.report_done(); "
             "os.read(int(sys.argv[2]), 1)")     # then it waits for its go pipe
    monkeypatch.setattr(helpers, "helper_argv", lambda module, *args: [sys.executable, "-c", child, *args])
    reaper = Reaper()
    helper = helpers.launch(reaper, "probe", deferred=True, reports=True)

    async def main():
        with trio.fail_after(30):
            await helpers.finish(reaper, helper, timeout=30)
        assert helper.popen.poll() is None and helper.popen.pid in reaper.tracked   # still running
        helper.release(b"x")
        with trio.fail_after(30):
            while helper.popen.returncode is None:     # the system task's wait
                await trio.sleep(0.01)
    trio.run(main)
    assert helper.popen.returncode == 0 and helper.popen.pid not in reaper.tracked


def test_a_reporting_helper_that_exits_without_done_fails_with_its_message(monkeypatch):
    monkeypatch.setattr(helpers, "helper_argv", lambda module, *a: [
        sys.executable, "-c", "import sys; sys.stderr.write('no netlink\\n'); sys.exit(1)"])
    reaper = Reaper()
    helper = helpers.launch(reaper, "probe", reports=True)
    with pytest.raises(helpers.HelperFailed, match="no netlink"):
        trio.run(lambda: helpers.finish(reaper, helper, timeout=30))
    assert helper.popen.pid not in reaper.tracked
