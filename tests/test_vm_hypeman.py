"""A drop-in guest for hypeman hosts (issue 18), in real TCG guests: config.json as hypeman's
host writes it -- an NFS volume served from the host, a null command, a field Kindling does
not honour -- and a console that carries the protocol's markers and the program's output."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from host_shim import netns
from initsys import protocol
from tests.hypeman_config import go_json, hypeman_config
from tests.vm import KINDLING, ROOT, env_for, private_home, qemu_pids_using

pytestmark = pytest.mark.vm

RUN_TIMEOUT = 420
NS_TIMEOUT = 240
EXPORT = "/export"
NET = netns.Network("unused").config_fields()
FAST = ["--accel", "tcg", "--agent", "none", "--no-headers", "--keep", "--timeout", "300"]

GANESHA_CONF = """\
NFS_CORE_PARAM {{ Protocols = 4; NFS_Port = 2049; Enable_NLM = false; Enable_RQUOTA = false; }}
NFSV4 {{ Graceless = true; }}
EXPORT {{
    Export_Id = 1; Path = {path}; Pseudo = {pseudo}; Access_Type = RW; Squash = No_Root_Squash;
    Protocols = 4; Transports = TCP; SecType = sys; FSAL {{ Name = VFS; }}
}}
"""


@pytest.fixture
def home():
    with private_home("kh-nfs-") as path:
        yield path
        for instance in path.glob("instances/*"):       # kept (--keep) for its logs
            netns.destroy_if_present(instance.name)


def start_run(home: Path, config: dict, tmp_path: Path, *extra: str) -> subprocess.Popen:
    path = tmp_path / "config.json"
    path.write_bytes(go_json(config))
    return subprocess.Popen([*KINDLING, "run", *FAST, *extra, "--config-json", str(path)],
                            cwd=ROOT, env=env_for(home), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def instance_namespace(home: Path, proc: subprocess.Popen) -> str:
    """The run's network namespace, once it exists (made before QEMU starts)."""
    import time
    deadline = time.monotonic() + NS_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        for d in home.glob("instances/*"):
            name = netns.namespace_for(d.name)
            if Path("/run/netns", name).exists():
                return name
        time.sleep(0.05)    # polls: nothing announces the namespace
    raise AssertionError(f"no namespace for the run (exit {proc.poll()}): {proc.stderr.read()}")


def serve_nfs(namespace: str, export: Path, tmp_path: Path) -> subprocess.Popen:
    """nfs-ganesha (userspace NFSv4, FSAL VFS) inside the instance's namespace, where the
    guest's gateway address is: the container has no kernel NFS server (no nfsd)."""
    conf = tmp_path / "ganesha.conf"
    conf.write_text(GANESHA_CONF.format(path=export, pseudo=EXPORT))
    return subprocess.Popen(["ip", "netns", "exec", namespace, "ganesha.nfsd", "-F", "-f", str(conf),
                             "-L", str(tmp_path / "ganesha.log"), "-p", str(tmp_path / "ganesha.pid")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def logs_of(home: Path) -> tuple[str, str]:
    (logs,) = home.glob("instances/*/logs")
    return ((logs / "app.log").read_text(errors="replace"),
            (logs / "control.log").read_text(errors="replace"))


def test_nfs_volume_is_mounted_read_and_written(home, tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    os.chmod(export, 0o777)
    (export / "from-host.txt").write_text("written by the host\n")
    nfs = {"device": "", "path": "/data", "mode": "nfs", "nfs_host": NET["guest_gw"],
           "nfs_export": EXPORT}
    program = ["/bin/sh", "-c", "cat /data/from-host.txt && echo 'written by the guest' > "
               "/data/from-guest.txt && grep ' /data ' /proc/mounts"]
    config = hypeman_config(program, None, volume_mounts=[nfs], skip_guest_agent=True,
                            skip_kernel_headers=True, egress_proxy={"enabled": True,
                            "proxy_url": "http://10.200.0.1:3128"}, **NET)
    proc = start_run(home, config, tmp_path, "--net")
    server = None
    try:
        server = serve_nfs(instance_namespace(home, proc), export, tmp_path)
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        proc.kill()
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    assert proc.returncode == 0, err
    assert "written by the host" in out
    assert " nfs4 " in out                                     # the guest's /proc/mounts
    assert (export / "from-guest.txt").read_text() == "written by the guest\n"
    console, control = logs_of(home)
    assert ("kindling: warning: config.json field 'egress_proxy' is not supported and is ignored"
            in console)
    # stages after the control port opened are on it only, not on the console
    assert "KINDLING-STAGE name=nfs " in control and "KINDLING-STAGE name=nfs " not in console
    assert "KINDLING-STAGE name=config " not in console
    assert qemu_pids_using(home) == []


def kindling_initrd(tmp_path: Path) -> Path:
    """The initrd Kindling builds (from the shared cache), to boot as a hypeman host would."""
    from image_build.build import BuildOptions, build_all
    from image_build.cache import default_cache_dir
    return build_all(BuildOptions(out_dir=tmp_path / "images", cache_dir=default_cache_dir())).initrd


def test_null_command_on_a_quiet_console_as_a_hypeman_host_boots_it(home, tmp_path):
    """Booted as a hypeman host boots our initrd (no control port, no kindling_timeline):
    null entrypoint and cmd -- hypeman's init runs `sh -c "cd / && exec "`, which starts
    and exits 0 -- and a console with the markers, nothing of the boot timeline."""
    config = hypeman_config(None, None, skip_guest_agent=True, skip_kernel_headers=True)
    assert b'"entrypoint":null,"cmd":null' in go_json(config)
    proc = start_run(home, config, tmp_path, "--initrd", str(kindling_initrd(tmp_path)),
                     "--kernel-arg", "kindling_timeline=0")
    out, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, err
    console = (next(home.glob("instances/*/logs")) / "app.log").read_text(errors="replace")
    lines = [l.rstrip("\r") for l in console.splitlines()]
    start = next(i for i, l in enumerate(lines) if l.startswith("HYPEMAN-PROGRAM-START ts="))
    assert 'HYPEMAN-EXIT code=0 message="success"' in lines[start + 1:]
    assert "KINDLING-STAGE" not in console
    assert not [l for l in lines if l.startswith("kindling:")]      # nothing else of ours


def test_config_disk_that_enables_the_agent_waits_for_it(home, tmp_path):
    """--config-disk with a disk as hypeman writes it (ext4 without a journal, -b 4096), its
    config leaving the agent on (skip_guest_agent omitted): Running needs AGENT-READY."""
    from tests.hypeman_config import config_disk
    from tests.vm import kindling, kindling_json
    config = hypeman_config(["/bin/sleep", "600"], None, env={"NOTE": "a&b<c>"},
                            skip_kernel_headers=True)
    disk = config_disk(tmp_path, go_json(config))
    created = kindling_json(home, "create", "--name", "hd", "--config-disk", str(disk))
    try:
        assert created["agent_skipped"] is False
        waited = kindling_json(home, "wait", "hd", "--for", "running", "--timeout", "300",
                               timeout=360)
        assert waited["state"] == "Running"
        assert protocol.AGENT_READY in waited["markers"]
        out = kindling(home, "exec", "hd", "--", "/bin/sh", "-c", 'echo "$NOTE"').stdout
        assert out == "a&b<c>\n"
    finally:
        kindling(home, "delete", "hd", check=False)
