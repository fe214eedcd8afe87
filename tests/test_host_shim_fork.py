"""host_shim/fork.py and snapshot.rewrite_argv/copy_to without a VM: a fork of a Stopped
and of a Standby instance made of real files (no QEMU), the record rewriting, and the
refusals, each leaving no new instance behind."""

import json
import os
import time

import pytest
import trio

from host_shim import fork, lifecycle, metadata, snapshot
from host_shim.errors import KindlingError, NoSuchInstance
from host_shim.instance import Instance, all_instances
from host_shim.markers import MarkerRecord
from host_shim.metadata import Metadata
from host_shim.prepare import vsock_cid
from host_shim.state import State


def make_source(home, tmp_path, state=State.STOPPED, volumes=()):
    """An instance laid out as create leaves it (images, overlay, config disk, a volume
    overlay disk), with a QEMU argv naming them; no QEMU."""
    source = Instance.create(home)
    source.images_dir.mkdir()
    for name in ("kernel", "initrd", "rootfs.img"):
        (source.images_dir / name).write_bytes(name.encode() * 100)
    with open(source.overlay_img, "wb") as f:
        f.truncate(64 << 20)
        f.seek(1 << 20)
        f.write(b"source overlay data")
    (source.dir / "volume-overlay-vol-1.img").write_bytes(b"volume overlay")
    source.config_img.write_bytes(b"old config disk")
    ro = tmp_path / "ro.img"
    ro.write_bytes(b"ro volume")
    d = source.dir
    argv = ["ip", "netns", "exec", f"kindling-{source.id}", "qemu-system-x86_64",
            "-name", f"kindling-{source.id}", "-kernel", f"{d}/images/kernel",
            "-initrd", f"{d}/images/initrd",
            "-drive", f"file={d}/images/rootfs.img,if=none,id=disk0,readonly=on",
            "-drive", f"file={d}/overlay.img,if=none,id=disk1",
            "-drive", f"file={d}/config.img,if=none,id=disk2,readonly=on",
            "-drive", f"file={ro},if=none,id=disk3,readonly=on",
            "-drive", f"file={d}/volume-overlay-vol-1.img,if=none,id=disk4",
            "-device", f"vhost-vsock-device,guest-cid={vsock_cid(source.id)}",
            "-qmp", f"unix:{d}/qmp.sock,server=on,wait=off", "-pidfile", f"{d}/qemu.pid"]
    now = time.time_ns()
    meta = Metadata(id=source.id, name="src", created_at=now, command=["sh"],
                    config={"entrypoint": ["sh"], "cmd": [], "init_mode": "exec"},
                    agent_skipped=True, argv=argv, accel="tcg", log_max_bytes=1 << 20,
                    log_keep=3, boot=1, boot_requested_at=now, logs_final=True,
                    options={"name": "src", "net": False, "volumes": list(volumes)})
    meta.markers = MarkerRecord()
    meta.record_state(state)
    metadata.save(source, meta)
    if state is State.STANDBY:
        p = snapshot.paths(source)
        p.dir.mkdir()
        p.vmstate.write_bytes(b"Q" * 4096)
        record = snapshot.Record(argv=argv, machine="microvm", qemu_version="7.2.0",
                                 vmstate_size=4096, saved_at=now,
                                 images={i: snapshot.fingerprint(i)
                                         for i in snapshot.images_of(argv)})
        snapshot._write_atomically(p.record, json.dumps(record.__dict__))
    return source, argv


def do_fork(home, ref, name, **kw):
    return trio.run(lambda: fork.fork(ref, name, home=home, **kw))


def test_rewrite_argv_moves_the_instance_dir_namespace_name_and_cid(tmp_path):
    source, argv = make_source(tmp_path / "home", tmp_path)
    new = Instance("0123456789ab", tmp_path / "home" / "instances" / "0123456789ab")
    out = snapshot.rewrite_argv(argv, source, new)
    text = " ".join(out)
    assert source.id not in text and str(source.dir) not in text
    assert out[3] == out[6] == "kindling-0123456789ab"
    assert f"file={new.dir}/overlay.img,if=none,id=disk1" in out
    assert f"file={tmp_path}/ro.img,if=none,id=disk3,readonly=on" in out    # outside: kept
    assert f"vhost-vsock-device,guest-cid={vsock_cid(new.id)}" in out


def test_copy_to_links_the_stream_and_rewrites_the_record(tmp_path):
    home = tmp_path / "home"
    source, argv = make_source(home, tmp_path, State.STANDBY)
    new = Instance.create(home)
    fork.copy_disks(source, metadata.load(source), new)
    record = snapshot.copy_to(source, new)
    assert os.stat(snapshot.paths(new).vmstate).st_ino == \
        os.stat(snapshot.paths(source).vmstate).st_ino
    assert record.argv == snapshot.rewrite_argv(argv, source, new)
    assert f"{new.dir}/overlay.img" in record.images
    assert snapshot.verify(new) == record          # the fork's own images fingerprinted
    assert snapshot.verify(source).argv == argv    # the source's record untouched


def test_fork_of_a_stopped_instance_has_its_own_disks(tmp_path):
    home = tmp_path / "home"
    source, argv = make_source(home, tmp_path)
    info_instance, meta = do_fork(home, "src", "child")
    new = Instance(meta.id, info_instance.dir)
    assert meta.state is State.STOPPED and meta.name == "child" and meta.id != source.id
    assert meta.boot == 0 and meta.argv == snapshot.rewrite_argv(argv, source, new)
    assert new.overlay_img.read_bytes() == source.overlay_img.read_bytes()
    assert os.stat(new.overlay_img).st_ino != os.stat(source.overlay_img).st_ino
    assert os.stat(new.overlay_img).st_blocks < (1 << 20) // 512      # sparse: holes kept
    assert (new.dir / "volume-overlay-vol-1.img").read_bytes() == b"volume overlay"
    assert os.stat(new.images_dir / "rootfs.img").st_ino == \
        os.stat(source.images_dir / "rootfs.img").st_ino
    assert new.config_img.read_bytes() != b"old config disk"     # rebuilt from the config
    with open(new.overlay_img, "r+b") as f:
        f.write(b"fork")
    assert source.overlay_img.read_bytes()[:4] == b"\0" * 4
    assert not snapshot.paths(new).dir.exists()


def test_fork_of_a_standby_instance_is_standby_with_its_own_snapshot(tmp_path):
    home = tmp_path / "home"
    source, _ = make_source(home, tmp_path, State.STANDBY)
    instance, meta = do_fork(home, "src", "child")
    assert meta.state is State.STANDBY and meta.boot == 1
    assert snapshot.verify(instance).argv == meta.argv
    assert trio.run(lifecycle.observe, source).state is State.STANDBY


def test_fork_to_stopped_drops_the_forks_snapshot_only(tmp_path):
    home = tmp_path / "home"
    source, _ = make_source(home, tmp_path, State.STANDBY)
    instance, meta = do_fork(home, "src", "child", target="stopped")
    assert meta.state is State.STOPPED and not snapshot.exists(instance)
    assert snapshot.exists(source)


def refused(home, ref, name, **kw) -> str:
    before = len(all_instances(home))
    with pytest.raises(KindlingError) as e:
        do_fork(home, ref, name, **kw)
    assert e.value.exit_code is None            # exit 125
    assert len(all_instances(home)) == before and not any(
        p.name != "names.lock" and not (p / "metadata.json").exists()
        for p in (home / "instances").iterdir())        # nothing half-made
    return e.value.message


@pytest.mark.parametrize("state", [State.RUNNING, State.PAUSED, State.INITIALIZING])
def test_fork_refuses_a_state_it_cannot_come_from_naming_it(tmp_path, state, monkeypatch):
    home = tmp_path / "home"
    make_source(home, tmp_path)

    async def observed(instance, meta, **kw):
        meta.state = state
    monkeypatch.setattr(lifecycle, "observe_locked", observed)
    message = refused(home, "src", "child")
    assert f"it is {state}" in message
    if state is State.RUNNING:
        assert "--from-running puts it in standby" in message


def test_fork_refuses_an_unknown_source_a_taken_name_and_a_bad_name(tmp_path):
    home = tmp_path / "home"
    make_source(home, tmp_path)
    with pytest.raises(NoSuchInstance, match="no such instance: nope"):
        do_fork(home, "nope", "child")
    assert "the name 'src' is already in use" in refused(home, "src", "src")
    assert "invalid instance name" in refused(home, "src", "no/slash")


def test_fork_refuses_rw_volumes_naming_them(tmp_path):
    home = tmp_path / "home"
    volumes = [{"image": "/v/data.img", "path": "/data", "mode": "rw"},
               {"image": "/v/base.img", "path": "/ov", "mode": "overlay"}]
    make_source(home, tmp_path, volumes=volumes)
    message = refused(home, "src", "child")
    assert "rw volume /v/data.img" in message and "base.img" not in message


def test_fork_refuses_standby_target_from_a_stopped_source(tmp_path):
    home = tmp_path / "home"
    make_source(home, tmp_path)
    assert "it is Stopped, so there is no memory" in refused(home, "src", "c", target="Standby")
    assert "--target-state 'Paused'" in refused(home, "src", "c", target="Paused")


def test_a_failed_copy_leaves_no_fork(tmp_path):
    home = tmp_path / "home"
    source, _ = make_source(home, tmp_path)
    source.overlay_img.unlink()
    assert "cp" in refused(home, "src", "child")
