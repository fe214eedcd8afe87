"""Templates in real TCG guests (issue 12): one template, its clones.

One template (--net, one volume slot) is made once for the module.  Two clones with
different config (program, env, a volume) run their own programs with their own
settings, read different bytes from /dev/urandom, have the host's clock, and do not see
each other's overlay writes; then four clones created at once all reach Running; then a
clone maps its template's RAM file privately (shared memory, the default), leaves it
unchanged and outlives the template (breaking it -- the clone mapping the file share=on
-- fails that test); last, a --private-memory template keeps the RAM in its snapshot.

What breaking the code once showed: without the resume line's sync (initsys/checkpoint.py
skipping sync.apply) a clone's clock was 20 s behind the host's, which the clock test
catches; its urandom bytes still differed from its sibling's (the per-CPU CRNG streams
diverge with each clone's own scheduling), so distinct bytes alone do not prove the
reseed -- they show two clones never hand out the same stream.
"""

import hashlib
import json
import os
import re
import subprocess
import time

import pytest

from host_shim import netns
from tests.vm import KINDLING, ROOT, env_for, eventually, kindling, kindling_json, private_home

pytestmark = pytest.mark.vm

PROGRAM = ('echo "who=$WHO"; echo "rand=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d \' \\n\')"; '
           'if [ -d /data/lost+found ]; then echo vol=yes; else echo vol=no; fi; '
           'echo "addr=$(ip addr show eth0 | grep -o \'inet [0-9.]*\')"; '
           'echo "dns=$(cat /etc/resolv.conf)"; sleep 600')


@pytest.fixture(scope="module")
def home():
    with private_home("ktpl") as home:
        kindling(home, "volume", "create", "v1", "--size", "16M")
        made = json.loads(kindling(home, "template", "create", "--json", "t", "--net",
                                   "--volume-slots", "1", "--no-headers", timeout=600).stdout)
        assert made["name"] == "t" and made["volume_slots"] == 1
        yield home    # private_home deletes the clones, their network namespaces with them


def console(home, name) -> str:
    instance = kindling_json(home, "inspect", name)["id"]
    return (home / "instances" / instance / "logs" / "app.log").read_text(errors="replace")


def value(home, name, key) -> str | None:
    found = re.findall(rf"^{key}=(.*)$", console(home, name), re.M)
    return found[-1].strip() if found else None


def test_the_template_never_read_a_disk(home):
    log = (home / "templates" / "t" / "logs" / "control.log").read_text()
    assert "KINDLING-CHECKPOINT ts=" in log
    assert "name=disks" not in log and "name=config" not in log and "PROGRAM-START" not in log
    listed = json.loads(kindling(home, "template", "list", "--json").stdout)
    assert [t["name"] for t in listed] == ["t"]


def test_two_clones_run_their_own_programs_with_their_own_settings(home):
    kindling(home, "create", "--name", "a", "--template", "t", "--env", "WHO=alpha",
             "--volume", "v1:/data", "--", "sh", "-c", PROGRAM)
    kindling(home, "create", "--name", "b", "--template", "t", "--env", "WHO=beta",
             "--", "sh", "-c", PROGRAM)
    for name in ("a", "b"):
        assert kindling_json(home, "wait", name, "--for", "running",
                             "--timeout", "300")["state"] == "Running"
        eventually(lambda: value(home, name, "addr"), f"{name}'s program output", timeout=120)
    assert (value(home, "a", "who"), value(home, "b", "who")) == ("alpha", "beta")
    assert (value(home, "a", "vol"), value(home, "b", "vol")) == ("yes", "no")
    assert value(home, "a", "addr") == value(home, "b", "addr") == "inet 10.200.0.2"
    # written by PID 1 into each clone's root once its helper configured eth0
    assert value(home, "a", "dns") == value(home, "b", "dns") == f"nameserver {netns.GATEWAY}"
    rand_a, rand_b = value(home, "a", "rand"), value(home, "b", "rand")
    assert len(rand_a) == 32 and rand_a != rand_b


def test_a_clone_has_the_hosts_clock(home):
    before = time.time()
    guest = int(kindling(home, "exec", "a", "--", "date", "+%s").stdout)   # busybox: no %N
    after = time.time()
    assert before - 1 <= guest <= after + 1     # the second it printed began within 1 s


def test_a_clones_overlay_writes_stay_its_own(home):
    kindling(home, "exec", "a", "--", "sh", "-c", "echo mine > /only-a; sync")
    assert kindling(home, "exec", "a", "--", "cat", "/only-a").stdout.strip() == "mine"
    assert kindling(home, "exec", "b", "--", "test", "-e", "/only-a", check=False).returncode == 1


def test_four_clones_created_at_once_all_reach_running(home):
    for name in ("a", "b"):
        kindling(home, "delete", name)
    names = [f"c{i}" for i in range(4)]
    creates = [subprocess.Popen([*KINDLING, "create", "--name", n, "--template", "t", "--", "sh", "-c",
                                 "echo up; sleep 600"], cwd=ROOT, env=env_for(home),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for n in names]
    for p in creates:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    for n in names:
        meta = kindling_json(home, "wait", n, "--for", "running", "--timeout", "300")
        assert meta["state"] == "Running"


def test_a_clone_maps_the_templates_ram_privately_and_outlives_the_template(home):
    """Shared memory (the default): the clone's QEMU maps its own hard link of the
    template's RAM file copy-on-write (MAP_PRIVATE), the file keeps the template's bytes,
    and after `template rm` the clone still stops and boots again."""
    for n in [f"c{i}" for i in range(4)]:
        kindling(home, "delete", n, check=False)       # memory for one more guest
    ram = home / "templates" / "t" / "ram"
    with open(ram, "rb") as f:
        before = hashlib.file_digest(f, "sha256").hexdigest()
    kindling(home, "create", "--name", "m", "--template", "t", "--env", "WHO=shm",
             "--", "sh", "-c", PROGRAM)
    assert kindling_json(home, "wait", "m", "--for", "running", "--timeout", "300")["state"] == "Running"
    eventually(lambda: value(home, "m", "who"), "m's program output", timeout=120)
    assert value(home, "m", "who") == "shm"
    info = kindling_json(home, "inspect", "m")
    mine = home / "instances" / info["id"] / "ram"
    assert os.path.samefile(mine, ram)                  # one inode: one page cache for all clones
    mapped = [line.split() for line in open(f"/proc/{info['pid']}/maps") if line.rstrip().endswith(str(mine))]
    assert mapped, f"QEMU {info['pid']} does not map {mine}"
    assert all(perms[3] == "p" for _, perms, *_ in mapped), mapped     # private, not shared
    with open(ram, "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == before  # the clone wrote its own copies
    kindling(home, "template", "rm", "t")
    kindling(home, "stop", "m")
    kindling(home, "start", "m")
    assert kindling_json(home, "wait", "m", "--for", "running", "--timeout", "300")["state"] == "Running"
    kindling(home, "delete", "m")


def test_a_private_memory_template_keeps_the_ram_in_its_snapshot(home):
    kindling(home, "template", "create", "p", "--private-memory", "--no-headers", timeout=600)
    assert not (home / "templates" / "p" / "ram").exists()
    assert (home / "templates" / "p" / "snapshot" / "vmstate").stat().st_size > 16 << 20
    kindling(home, "create", "--name", "q", "--template", "p", "--env", "WHO=private",
             "--", "sh", "-c", PROGRAM)
    assert kindling_json(home, "wait", "q", "--for", "running", "--timeout", "300")["state"] == "Running"
    eventually(lambda: value(home, "q", "who"), "q's program output", timeout=120)
    assert value(home, "q", "who") == "private"
    kindling(home, "delete", "q")
