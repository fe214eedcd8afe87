"""Network and volumes in real VMs under TCG (issue 3 acceptance)."""

import os
import subprocess
import sys
import time

import pytest

from tests.vm import KINDLING, ROOT, kindling_run, require_qemu

pytestmark = pytest.mark.vm


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def kindling(home, *args, timeout=60):
    env = dict(os.environ, KINDLING_HOME=str(home), KINDLING_ACCEL="tcg")
    return subprocess.run([*KINDLING, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def fetch_in_netns(namespace, host, port, deadline):
    """Connect from inside the instance's namespace (a python3 in `ip netns exec`)."""
    code = ("import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2); "
            "print(s.recv(100).decode().strip())")
    while time.monotonic() < deadline:
        r = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", code, host, str(port)],
                           capture_output=True, text=True, timeout=10)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip()
        time.sleep(0.3)
    return None


def test_guest_with_net_answers_tcp_from_its_namespace(home):
    require_qemu()
    env = dict(os.environ, KINDLING_HOME=str(home), KINDLING_ACCEL="tcg")
    proc = subprocess.Popen([*KINDLING, "run", "--net", "--", "sh", "-c",
                             "echo served-by-guest | nc -l -p 8080; cat /etc/resolv.conf"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        namespace = None
        while namespace is None and time.monotonic() < deadline:
            ids = [p.name for p in (home / "instances").glob("*")] if (home / "instances").exists() else []
            names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            namespace = next((f"kindling-{i}" for i in ids if f"kindling-{i}" in names), None)
            time.sleep(0.2)
        assert namespace, "no network namespace appeared for the instance"
        assert fetch_in_netns(namespace, "10.200.0.2", 8080, deadline) == "served-by-guest"
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "nameserver 10.200.0.1" in out
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert namespace not in names, "the namespace must be removed after the run"


def test_rw_volume_persists_ro_refuses_overlay_spares_base(home, tmp_path):
    r = kindling(home, "volume", "create", "data1", "--size", "16M")
    assert r.returncode == 0, r.stderr
    image = home / "volumes" / "data1.img"
    assert image.is_file()

    r = kindling_run(home, "--volume", "data1:/data", "--", "sh", "-c", "echo hello > /data/f && sync")
    assert r.returncode == 0, r.stderr

    r = kindling_run(home, "--volume", "data1:/data:ro", "--", "sh", "-c", "cat /data/f; echo x > /data/g")
    assert r.stdout.splitlines()[0] == "hello"
    assert r.returncode != 0
    assert "Read-only file system" in r.stdout + r.stderr

    r = kindling_run(home, "--volume", "data1:/data:overlay", "--", "sh", "-c",
                     "echo changed > /data/f && echo new > /data/n && cat /data/f")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "changed"
    base = subprocess.run(["debugfs", "-R", "cat /f", str(image)], capture_output=True, text=True, timeout=30)
    assert base.stdout == "hello\n"
    listing = subprocess.run(["debugfs", "-R", "ls /", str(image)], capture_output=True, text=True, timeout=30)
    assert " n " not in listing.stdout and "g" not in listing.stdout.split()


def test_volume_that_is_not_ext4_is_fatal(home, tmp_path):
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\x00" * (8 << 20))
    r = kindling_run(home, "--volume", f"{junk}:/data", "--", "sh", "-c", "echo should-not-run")
    assert r.returncode == 125, r.stderr
    assert "should-not-run" not in r.stdout
    assert "guest failed in stage volumes" in r.stderr
    assert "/dev/vdd" in r.stderr and "/data" in r.stderr
