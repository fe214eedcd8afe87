"""`kindling fork` in a real TCG guest (issue 12, fork).

One exec-mode guest with --net serves every test, in file order: its program prints
`tick N` on the console every 0.2 s (N counts in the shell's memory and in a tmpfs file,
as in test_vm_snapshot.py) and serves TCP on port 8080.  It goes to standby, is forked,
and both are restored: each must go on counting from the snapshot's value on its own
console, with its own overlay disk and its own network namespace.
"""

import time

import pytest

from tests.test_vm_stages import fetch_in_netns
from tests.vm import COUNTER_PROGRAM as PROGRAM
from tests.vm import COUNTER_TICK as TICK
from tests.vm import eventually, kindling, kindling_json, private_home

pytestmark = pytest.mark.vm



@pytest.fixture(scope="module")
def guest():
    with private_home("kfork") as home:
        kindling(home, "create", "--name", "src", "--net", "--", "sh", "-c", PROGRAM)
        kindling(home, "wait", "src", "--for", "running", "--timeout", "300")
        yield home


def instance_dir(home, name):
    return home / "instances" / kindling_json(home, "inspect", name)["id"]


def ticks(home, name) -> list[int]:
    log = (instance_dir(home, name) / "logs" / "app.log").read_text(errors="replace")
    return [int(n) for n in TICK.findall(log)]


def ticked_past(home, name, n: int) -> None:
    eventually(lambda: ticks(home, name) and ticks(home, name)[-1] > n,
               f"a tick of {name} after {n}", timeout=120)


def sh(home, name, script) -> str:
    return kindling(home, "exec", name, "--", "sh", "-c", script).stdout


def test_fork_from_standby_continues_the_counter_independently(guest):
    eventually(lambda: len(ticks(guest, "src")) > 3, "three ticks", timeout=120)
    sh(guest, "src", "echo before > /before; sync")
    assert kindling_json(guest, "standby", "src")["state"] == "Standby"
    last = ticks(guest, "src")[-1]
    kid = kindling_json(guest, "fork", "src", "--name", "kid")
    assert kid["state"] == "Standby" and kid["name"] == "kid"
    assert ticks(guest, "kid") == []                      # its own, empty, console log
    assert kindling_json(guest, "restore", "src")["state"] == "Running"
    assert kindling_json(guest, "restore", "kid")["state"] == "Running"
    ticked_past(guest, "kid", last + 3)
    ticked_past(guest, "src", last + 3)
    seen = ticks(guest, "kid")
    assert seen == list(range(last + 1, last + 1 + len(seen))), "the fork did not continue"
    source = ticks(guest, "src")
    assert source == list(range(1, len(source) + 1)), "the source restarted or skipped"
    assert int(sh(guest, "kid", "cat /cnt/count")) > last
    sh(guest, "src", "echo src > /src-only; sync")
    sh(guest, "kid", "echo kid > /kid-only; sync")
    assert sh(guest, "kid", "cat /before; ls /src-only 2>&1 || true").startswith(
        "before\nls: /src-only: No such file")
    assert sh(guest, "src", "cat /before; ls /kid-only 2>&1 || true").startswith(
        "before\nls: /kid-only: No such file")
    namespace = f"kindling-{kid['id']}"
    assert fetch_in_netns(namespace, "10.200.0.2", 8080, time.monotonic() + 60) == "served-by-guest"


def test_fork_from_running_needs_the_flag_and_restores_the_source(guest):
    r = kindling(guest, "fork", "src", "--name", "kid2", check=False)
    assert r.returncode == 125 and "it is Running" in r.stderr and "--from-running" in r.stderr
    last = ticks(guest, "src")[-1]
    kid2 = kindling_json(guest, "fork", "src", "--name", "kid2", "--from-running",
                         "--target-state", "Stopped")
    assert kid2["state"] == "Stopped"
    assert not (instance_dir(guest, "kid2") / "snapshot").exists()
    assert kindling_json(guest, "inspect", "src")["state"] == "Running"
    ticked_past(guest, "src", last)
    r = kindling(guest, "fork", "src", "--name", "kid2", "--from-running", check=False)
    assert r.returncode == 125 and "the name 'kid2' is already in use" in r.stderr
    assert kindling_json(guest, "inspect", "src")["state"] == "Running"
