"""The early-boot watchdog (issue 15 §2, host_shim/watchdog.py) with a real kernel under
QEMU/TCG.  The first launch gets kernel arguments that stop the kernel before PID 1
(`rdinit=` a file the initrd does not have, then `rootdelay=` makes the kernel sleep
before it would mount a root device): the console stays silent and no stage line
comes, however fast the machine is.  The watchdog ends that launch and launches the
instance again with its own command line, and the program runs to its end.
The relaunch is on stderr, in `inspect --json` and in the state history.

BOUND is a third of the default, so that the tests take ~1 min: a loaded host may then
make the relaunched (normal) boot slow enough for a second relaunch (seen at load 8: a
normal boot used ~6 s of QEMU CPU time and 10-20 s before its first stage line); the
tests allow it, since the last launch allowed is never ended by the watchdog."""

import json
import re

import pytest

from host_shim import watchdog
from tests.test_host_shim_lifecycle_vm import home, kindling, kindling_json  # noqa: F401
from tests.vm import kindling_run, qemu_pids_using

pytestmark = pytest.mark.vm

BOUND = 10
HANG_FIRST_LAUNCH = ["--first-launch-kernel-arg", "rdinit=/kindling-test-no-such-init",
                     "--first-launch-kernel-arg", "rootdelay=100000",
                     "--early-boot-timeout", str(BOUND), "--no-headers"]


def check_relaunched(info: dict) -> None:
    """Boot 1 was relaunched by the watchdog, with its reason; the last boot got going."""
    relaunches = info["relaunches"]
    assert 1 <= len(relaunches) <= watchdog.MAX_RELAUNCHES, info
    first = relaunches[0]
    assert first["boot"] == 1, info
    assert first["reason"].startswith(f"{watchdog.REASON_PREFIX}: no boot stage line "), first
    # quiet: the kernel prints little or nothing before it stops, and never a marker
    assert ("the console stayed silent" in first["reason"]
            or " console lines, none from PID 1" in first["reason"]), first
    assert info["boot"] == 1 + len(relaunches), info
    stopped = [h for h in info["history"] if h["boot"] == 1 and h["state"] == "Stopped"]
    assert [h.get("reason") for h in stopped] == [first["reason"]], info["history"]


def test_run_relaunches_a_boot_hung_before_pid1(home):  # noqa: F811
    # up to three launches on a loaded host: room beyond kindling_run's --timeout 120
    result = kindling_run(home, *HANG_FIRST_LAUNCH, "--keep", "--timeout", "500",
                          "--boot-timeout", "450", "--", "sh", "-c", "echo relaunched fine",
                          timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "relaunched fine\n", result.stdout
    assert f"kindling: {watchdog.REASON_PREFIX}: no boot stage line" in result.stderr
    assert "the VM was ended and is launched again (relaunch 1 of 2)" in result.stderr
    (instance,) = home.glob("instances/*")
    info = kindling_json(home, "inspect", instance.name)
    check_relaunched(info)
    assert info["exit"]["code"] == 0, info
    text = kindling(home, "inspect", instance.name).stdout
    assert re.search(rf"^relaunches: +{len(info['relaunches'])}$", text, re.M), text
    assert re.search(rf"^relaunched: +boot 1: {watchdog.REASON_PREFIX}: ", text, re.M), text
    kindling(home, "delete", instance.name)


def test_wait_relaunches_a_boot_hung_before_pid1(home):  # noqa: F811
    created = kindling_json(home, "create", *HANG_FIRST_LAUNCH, "--agent", "none", "--",
                            "sleep", "1000")
    r = kindling(home, "wait", created["id"], "--for", "running", "--timeout", "450", "--json",
                 timeout=600)
    info = json.loads(r.stdout)
    assert info["state"] == "Running", info
    assert f"kindling: {watchdog.REASON_PREFIX}: no boot stage line" in r.stderr, r.stderr
    check_relaunched(kindling_json(home, "inspect", created["id"]))
    kindling(home, "delete", created["id"])
    assert qemu_pids_using(home) == []
