"""Network and volume stages on the host, with real kernel facilities (root):
a veth interface in a network namespace the test creates, loop devices holding
real ext4 images, and a private mount namespace.  Checked with tools we did
not write (`ip -j`, reading the mounted files)."""

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from initsys import protocol
from initsys.stages import plan, sequence, shadows_etc, strategy_of

REPO = Path(__file__).resolve().parents[1]


def cfg(**fields):
    base = {"entrypoint": ["/bin/true"]}
    base.update(fields)
    return protocol.validate_config(base)


NET = {"network_enabled": True, "guest_ip": "10.77.0.2", "guest_cidr": 24, "guest_gw": "10.77.0.1",
       "guest_dns": "10.77.0.53"}


@pytest.mark.parametrize("path, expected", [
    ("/", True), ("/etc", True), ("/etc/ssl", True), ("/etc/", True), ("/etcetera", False),
    ("/data", False), ("/var/etc", False),
])
def test_shadows_etc(path, expected):
    assert shadows_etc(path) is expected


def test_plan_runs_independent_stages_together_and_orders_the_etc_rule():
    vol = {"device": "/dev/vdd", "path": "/data", "mode": "rw"}
    assert plan(cfg(**NET, volume_mounts=[vol])) == [("volumes", ()), ("network", ())]
    etc = {"device": "/dev/vdd", "path": "/etc/app", "mode": "ro"}
    assert plan(cfg(**NET, volume_mounts=[etc])) == [("volumes", ()), ("network", ("volumes",))]
    assert plan(cfg(**NET)) == [("network", ())]
    assert plan(cfg()) == []


NFS = {"device": "", "path": "/shared", "mode": "nfs", "nfs_host": "10.77.0.1", "nfs_export": "/srv"}


def test_nfs_volumes_are_mounted_after_the_network_and_the_disk_volumes():
    assert plan(cfg(**NET, volume_mounts=[NFS])) == [("network", ()), ("nfs", ("network",))]
    vol = {"device": "/dev/vdd", "path": "/data", "mode": "rw"}
    assert plan(cfg(**NET, volume_mounts=[NFS, vol])) == [
        ("volumes", ()), ("network", ()), ("nfs", ("network", "volumes"))]
    etc_nfs = dict(NFS, path="/etc/shared")        # an NFS path does not order the network
    assert plan(cfg(**NET, volume_mounts=[etc_nfs])) == [("network", ()), ("nfs", ("network",))]
    both = cfg(**NET, volume_mounts=[NFS, vol])
    assert sequence(both, "sequential") == ["volumes", "network", "nfs"]
    assert sequence(both, "baseline") == ["network", "volumes", "nfs"]


def test_nfs_mount_options_are_hypemans_with_the_addresses():
    from initsys import volumes
    (v,) = cfg(**NET, volume_mounts=[NFS]).volume_mounts
    assert volumes.nfs_options(v, "10.77.0.2") == (
        "vers=4,tcp,hard,timeo=100,retrans=3,addr=10.77.0.1,clientaddr=10.77.0.2")
    assert volumes.device_names([v]) == []


def test_sequence_per_strategy_keeps_the_etc_rule():
    data = cfg(**NET, volume_mounts=[{"device": "/dev/vdd", "path": "/data", "mode": "rw"}])
    assert sequence(data, "sequential") == ["volumes", "network"]
    assert sequence(data, "baseline") == ["network", "volumes"]    # the seed's order
    for path in ("/", "/etc", "/etc/app"):
        etc = cfg(**NET, volume_mounts=[{"device": "/dev/vdd", "path": path, "mode": "rw"}])
        assert sequence(etc, "baseline") == ["volumes", "network"], path
    assert sequence(cfg(**NET), "baseline") == ["network"]
    assert sequence(cfg(volume_mounts=[{"device": "/dev/vdd", "path": "/d"}]), "baseline") == ["volumes"]


def test_strategy_of_kernel_argument_overrides_the_config():
    assert strategy_of(cfg(), {}) == "concurrent"
    assert strategy_of(cfg(boot_strategy="baseline"), {}) == "baseline"
    assert strategy_of(cfg(boot_strategy="baseline"), {"kindling_strategy": "sequential"}) == "sequential"
    assert strategy_of(cfg(), {"kindling_strategy": "baseline"}) == "baseline"
    with pytest.raises(ValueError, match="kindling_strategy=fast: expected one of concurrent, sequential, baseline"):
        strategy_of(cfg(), {"kindling_strategy": "fast"})


def sh(*argv, timeout=60, check=True):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture
def netns():
    name = f"kt-{uuid.uuid4().hex[:8]}"
    peer = f"kv{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", name)
        yield name
    finally:
        sh("ip", "link", "del", peer, check=False)
        sh("ip", "netns", "del", name, check=False)


def ext4_image(path, size_mib=16, files=None, tmp=None):
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    argv = ["mkfs.ext4", "-q", "-F"]
    if files:
        src = Path(str(path) + ".d")
        src.mkdir()
        for name, text in files.items():
            (src / name).write_text(text)
        argv += ["-d", str(src)]
    sh(*argv, str(path))
    return path


@pytest.fixture
def loops(tmp_path):
    attached = []

    def attach(img):
        dev = sh("losetup", "--find", "--show", str(img)).stdout.strip()
        attached.append(dev)
        return dev
    yield attach
    for dev in attached:
        sh("losetup", "-d", dev, check=False)


# Runs the real stages (initsys.stages.run) in a child process that lives in the
# test's network namespace and in a private mount namespace.
DRIVER = textwrap.dedent(r"""
    import json, sys, trio
    sys.path.insert(0, sys.argv[1])
    from initsys import protocol, stages
    from initsys.failure import BootFailed
    from initsys.network_helper import NetworkHelper
    from initsys.reaper import Reaper
    cfg = protocol.validate_config(json.loads(sys.argv[2]))
    async def main():
        reaper = Reaper()
        async with trio.open_nursery() as n:
            await n.start(reaper.run)
            network = NetworkHelper(reaper, sys.argv[3])
            network.settle(cfg, launch_now=stages.network_starts_early(cfg, sys.argv[4]))
            try:
                t = await stages.run(cfg, sys.argv[3], network, sys.argv[4])
                print(json.dumps({"ok": t}))
            except BootFailed as e:
                print(json.dumps({"failed": e.stage, "error": str(e)}))
            n.cancel_scope.cancel()
    trio.run(main)
""")


VOLUME_DRIVER = DRIVER.replace('print(json.dumps({"ok": t}))', "check(t)").replace(
    "async def main():", textwrap.dedent("""
    def check(t):
        import os, errno
        res = {"ok": t}
        r = sys.argv[3]
        res["ro_read"] = open(r + "/ro/hello").read()
        try:
            open(r + "/ro/new", "w")
            res["ro_write"] = "succeeded"
        except OSError as e:
            res["ro_write"] = errno.errorcode[e.errno]
        open(r + "/data/written", "w").write("persisted")
        open(r + "/layered/base.txt", "w").write("changed in overlay")
        open(r + "/layered/new.txt", "w").write("new")
        res["layered"] = sorted(os.listdir(r + "/layered"))
        print(json.dumps(res))
    async def main():"""))


def run_stages(netns, config, root, strategy="concurrent"):
    argv = ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", DRIVER,
            str(REPO), json.dumps(config), str(root), strategy]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    r = sh(*argv, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_network_stage_configures_a_real_interface(netns, tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "resolv.conf").symlink_to("/run/elsewhere/resolv.conf")  # replaced, not followed
    config = {"entrypoint": ["/bin/true"], **NET, "mtu": 1400, "hostname": "guest1",
              "hosts": {"db": "10.77.0.9"}}
    out = run_stages(netns, config, root)
    assert "network" in out["ok"]
    addrs = json.loads(sh("ip", "-n", netns, "-j", "addr", "show", "eth0").stdout)[0]
    assert addrs["mtu"] == 1400
    assert "UP" in addrs["flags"]
    assert {(a["local"], a["prefixlen"]) for a in addrs["addr_info"] if a["family"] == "inet"} == {("10.77.0.2", 24)}
    routes = json.loads(sh("ip", "-n", netns, "-j", "route").stdout)
    assert {"dst": "default", "gateway": "10.77.0.1"}.items() <= next(r for r in routes if r["dst"] == "default").items()
    lo = json.loads(sh("ip", "-n", netns, "-j", "addr", "show", "lo").stdout)[0]
    assert "UP" in lo["flags"]
    assert (root / "etc" / "resolv.conf").read_text() == "nameserver 10.77.0.53\n"
    assert not (root / "etc" / "resolv.conf").is_symlink()
    assert "10.77.0.9\tdb" in (root / "etc" / "hosts").read_text()
    assert (root / "etc" / "hostname").read_text() == "guest1\n"


def test_network_stage_failure_names_the_interface(tmp_path):
    # no netns: a fresh namespace has no eth0 -> the stage fails, naming it
    name = f"kt-{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", name)
    try:
        root = tmp_path / "root"
        (root / "etc").mkdir(parents=True)
        out = run_stages(name, {"entrypoint": ["/bin/true"], **NET}, root)
        assert out["failed"] == "network"
        assert "eth0" in out["error"]
    finally:
        sh("ip", "netns", "del", name, check=False)


def test_volume_stage_mounts_ro_rw_overlay(tmp_path, loops):
    root = tmp_path / "root"
    root.mkdir()
    ro = loops(ext4_image(tmp_path / "ro.img", files={"hello": "from ro"}))
    rw = loops(ext4_image(tmp_path / "rw.img"))
    base = loops(ext4_image(tmp_path / "base.img", files={"base.txt": "base"}))
    upper = loops(ext4_image(tmp_path / "upper.img"))
    config = {"entrypoint": ["/bin/true"], "volume_mounts": [
        {"device": ro, "path": "/ro", "mode": "ro"},
        {"device": rw, "path": "/data", "mode": "rw"},
        {"device": base, "path": "/layered", "mode": "overlay", "overlay_device": upper},
    ]}
    # Mount, then write through each mount point, all inside the child's mount namespace.
    argv = ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", VOLUME_DRIVER,
            str(REPO), json.dumps(config), str(root), "concurrent"]
    r = sh(*argv, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["ro_read"] == "from ro"
    assert out["ro_write"] == "EROFS"
    assert out["layered"] == ["base.txt", "lost+found", "new.txt"]
    # After the namespace is gone: rw data persisted; the overlay never touched its base.
    dump = sh("debugfs", "-R", "cat /written", rw).stdout
    assert dump == "persisted"
    assert sh("debugfs", "-R", "cat /base.txt", base).stdout == "base"
    assert "new.txt" not in sh("debugfs", "-R", "ls -l /", base).stdout


def test_volume_that_is_not_ext4_fails_naming_device_and_path(tmp_path, loops):
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\x00" * (4 << 20))
    dev = loops(junk)
    out = run_stages(None, {"entrypoint": ["/bin/true"], "volume_mounts": [
        {"device": dev, "path": "/data", "mode": "rw"}]}, tmp_path)
    assert out["failed"] == "volumes"
    assert dev in out["error"] and "/data" in out["error"] and "ext4" in out["error"]


def _both(netns, tmp_path, loops, vol_path, strategy="concurrent"):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    dev = loops(ext4_image(tmp_path / "v.img"))
    config = {"entrypoint": ["/bin/true"], **NET,
              "volume_mounts": [{"device": dev, "path": vol_path, "mode": "rw"}]}
    return run_stages(netns, config, root, strategy)["ok"]


def test_stages_overlap_in_time(netns, tmp_path, loops):
    t = _both(netns, tmp_path, loops, "/data")
    (v0, v1), (n0, n1) = t["volumes"], t["network"]
    assert v0 < n1 and n0 < v1, t   # the intervals intersect


def test_etc_rule_orders_volumes_before_network(netns, tmp_path, loops):
    t = _both(netns, tmp_path, loops, "/etc/app")
    assert t["volumes"][1] <= t["network"][0], t


def test_sequential_strategy_runs_one_after_another(netns, tmp_path, loops):
    t = _both(netns, tmp_path, loops, "/data", strategy="sequential")
    assert t["volumes"][1] <= t["network"][0], t


def test_baseline_strategy_runs_network_then_volumes(netns, tmp_path, loops):
    t = _both(netns, tmp_path, loops, "/data", strategy="baseline")
    assert t["network"][1] <= t["volumes"][0], t


def test_baseline_strategy_keeps_volumes_first_for_etc(netns, tmp_path, loops):
    t = _both(netns, tmp_path, loops, "/etc/app", strategy="baseline")
    assert t["volumes"][1] <= t["network"][0], t
