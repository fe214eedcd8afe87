"""Faults on the host that need no guest (issue 15, part 3): the `kindling` process
killed in the middle of `create`, and the host disk full while creating.

The kill is deterministic: `kindling create` runs in a subprocess in which one step
of create (host_shim/lifecycle.py) is replaced by a SIGKILL of the process itself.
QEMU is launched with -S in the second window, so no guest runs.
"""

import errno
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.vm import ROOT, env_for, kindling, kindling_json, private_home, qemu_pids_using

KILLED_IN = """
import os, signal, sys
from host_shim import cli, {module} as target
def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
target.{attr} = killed
sys.exit(cli.main(sys.argv[1:]))
"""


def create_killed_in(home: Path, module: str, attr: str) -> None:
    """`kindling create` SIGKILLed when it calls host_shim.<module>.<attr>."""
    result = subprocess.run(
        [sys.executable, "-c", KILLED_IN.format(module=module, attr=attr),
         "create", "--name", "victim", "--agent", "none", "--no-headers", "--", "true"],
        cwd=ROOT, env=env_for(home), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=300)
    assert result.returncode == -9, result.stderr


def metadata_files(home: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (home / "instances").glob("*/metadata.json")]


@pytest.mark.parametrize("module, attr, state", [
    ("prepare", "build_artifacts", "Stopped"),   # the dir and metadata.json exist, no QEMU
    ("vmm", "cont", "Created"),                  # QEMU launched (-S), boot not yet recorded
])
def test_create_killed_midway_leaves_a_consistent_instance(module, attr, state):
    with private_home("kf-") as home:
        create_killed_in(home, module, attr)
        [listed] = kindling_json(home, "list")
        assert (listed["name"], listed["state"]) == ("victim", state)
        inspected = kindling_json(home, "inspect", "victim")
        assert inspected["state"] == state
        assert [m["name"] for m in metadata_files(home)] == ["victim"]   # valid JSON
        if state == "Stopped":
            refused = kindling(home, "start", "victim", check=False)
            assert refused.returncode == 125
            assert "never completely created" in refused.stderr
        kindling(home, "delete", "victim")
        assert kindling_json(home, "list") == []
        assert qemu_pids_using(home) == []
        assert list((home / "instances").iterdir()) == []


@pytest.fixture
def full_home():
    """A KINDLING_HOME on a 64 KiB tmpfs, filled up unless the test frees it."""
    path = Path(tempfile.mkdtemp(prefix="kfull-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)],
                   check=True, timeout=30)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True, timeout=30)
        path.rmdir()


def fill(path: Path) -> Path:
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


@pytest.mark.parametrize("when", ["metadata", "images"])
def test_disk_full_while_creating_is_a_clear_error_and_leaves_nothing(full_home, when):
    (full_home / "instances").mkdir()
    filler = fill(full_home)
    if when == "images":          # room for metadata.json, none for the kernel image
        filler.unlink()
    result = kindling(full_home, "create", "--name", "full", "--", "true", check=False)
    assert result.returncode == 125, result.stderr
    assert f"error: no space left on the disk of {full_home}" in result.stderr
    if when == "images":
        assert f"(writing {full_home}/instances/" in result.stderr
    assert list((full_home / "instances").iterdir()) == []
    assert kindling_json(full_home, "list") == []
