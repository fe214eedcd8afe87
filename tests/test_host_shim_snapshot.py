"""host_shim/snapshot.py and standby.py without a VM: the snapshot record and its checks,
partial files, the state transitions pause/resume/standby/restore refuse, start/stop/delete
of a Standby instance, and QMP getfd's descriptor passing."""

import array
import json
import os
import socket
import time

import pytest
import trio

from host_shim import lifecycle, metadata, qmp, snapshot, standby, watchdog
from host_shim.errors import KindlingError
from host_shim.instance import Instance
from host_shim.metadata import Metadata
from host_shim.state import State


def make_instance(home, tmp_path, state=State.STOPPED):
    """A Stopped instance with real files as its images (no QEMU), and its argv."""
    instance = Instance.create(home)
    images = {}
    for name in ("kernel", "initrd", "root,fs.img", "vol.img"):
        images[name] = tmp_path / name
        images[name].write_bytes(name.encode() * 100)
    argv = ["qemu-system-x86_64", "-machine", "microvm,rtc=on",
            "-kernel", str(images["kernel"]), "-initrd", str(images["initrd"]),
            "-drive", f"file={str(images['root,fs.img']).replace(',', ',,')},if=none,id=disk0",
            "-drive", f"file={images['vol.img']},if=none,id=disk3,format=raw",
            "-chardev", "file,id=control,path=/x/control.log"]
    now = time.time_ns()
    meta = Metadata(id=instance.id, name="snap", created_at=now, command=["sh"],
                    config={"init_mode": "exec"}, agent_skipped=True, argv=argv, accel="tcg",
                    log_max_bytes=1 << 20, log_keep=3, boot=1, boot_requested_at=now,
                    logs_final=True)
    meta.record_state(state)
    metadata.save(instance, meta)
    return instance, argv, images


def fake_snapshot(instance, argv, size=4096):
    """What standby leaves: the instance was Paused, snapshot.save wrote the stream, then
    the record, and QEMU ended."""
    meta = metadata.load(instance)
    meta.record_state(State.PAUSED)
    metadata.save(instance, meta)
    p = snapshot.paths(instance)
    p.dir.mkdir()
    p.vmstate.write_bytes(b"Q" * size)
    record = snapshot.Record(argv=argv, machine="microvm,rtc=on", qemu_version="7.2.0",
                             vmstate_size=size,
                             images={i: snapshot.fingerprint(i) for i in snapshot.images_of(argv)},
                             saved_at=time.time_ns())
    snapshot._write_atomically(p.record, json.dumps(record.__dict__))
    return p


def test_images_of_reads_kernel_initrd_and_drives_with_escaped_commas(tmp_path):
    instance, argv, images = make_instance(tmp_path / "home", tmp_path)
    assert snapshot.images_of(argv) == [str(images[n]) for n in
                                        ("kernel", "initrd", "root,fs.img", "vol.img")]


def test_incoming_argv_appends_to_the_control_log_and_defers():
    argv = ["q", "-chardev", "file,id=control,path=/c.log",
            "-chardev", "file,id=con,path=/a.log,append=on"]
    assert snapshot.incoming_argv(argv) == [
        "q", "-chardev", "file,id=control,path=/c.log,append=on",
        "-chardev", "file,id=con,path=/a.log,append=on", "-incoming", "defer"]


def test_a_complete_snapshot_verifies_and_makes_the_instance_standby(tmp_path):
    instance, argv, _ = make_instance(tmp_path / "home", tmp_path)
    fake_snapshot(instance, argv)
    assert snapshot.verify(instance).argv == argv
    meta = trio.run(lifecycle.observe, instance)
    assert meta.state is State.STANDBY


def test_a_partial_snapshot_is_not_a_snapshot(tmp_path):
    instance, argv, _ = make_instance(tmp_path / "home", tmp_path)
    p = snapshot.paths(instance)
    p.dir.mkdir()
    p.partial.write_bytes(b"half")
    p.vmstate.write_bytes(b"whole stream but no record")
    assert not snapshot.exists(instance)
    assert trio.run(lifecycle.observe, instance).state is State.STOPPED


@pytest.mark.parametrize("damage, expected", [
    (lambda p, images: p.vmstate.unlink(), "snapshot file .* is missing"),
    (lambda p, images: os.truncate(p.vmstate, 100), "is 100 bytes, its record says 4096"),
    (lambda p, images: images["vol.img"].write_bytes(b"changed"),
     r"image .*vol\.img changed while the instance was in standby"),
    (lambda p, images: images["kernel"].unlink(), r"image .*kernel of the snapshot is missing"),
    (lambda p, images: p.record.write_text("{not json"), "corrupt snapshot record"),
])
def test_restore_refuses_a_damaged_snapshot_and_stays_standby(tmp_path, damage, expected):
    instance, argv, images = make_instance(tmp_path / "home", tmp_path)
    p = fake_snapshot(instance, argv)
    damage(p, images)
    record_before = p.record.read_bytes()
    with pytest.raises(KindlingError, match=expected) as e:
        trio.run(standby.restore, instance)
    assert e.value.exit_code is None          # Kindling's own error: exit 125
    assert p.record.read_bytes() == record_before
    assert trio.run(lifecycle.observe, instance).state is State.STANDBY


@pytest.mark.parametrize("operation, needs", [
    (standby.pause, "pause needs Running"), (standby.resume, "resume needs Paused"),
    (standby.standby, "standby needs Running or Paused"),
    (standby.restore, "restore needs Standby")])
def test_transitions_outside_the_table_are_refused_naming_the_state(tmp_path, operation, needs):
    instance, _, _ = make_instance(tmp_path / "home", tmp_path)
    with pytest.raises(KindlingError, match=f"it is Stopped \\({needs}\\)"):
        trio.run(operation, instance)
    meta = metadata.load(instance)
    assert meta.state is State.STOPPED and not snapshot.paths(instance).dir.exists()


def test_standby_instance_refuses_pause_and_standby(tmp_path):
    instance, argv, _ = make_instance(tmp_path / "home", tmp_path)
    fake_snapshot(instance, argv)
    for operation in (standby.pause, standby.standby, standby.resume):
        with pytest.raises(KindlingError, match="it is Standby"):
            trio.run(operation, instance)
    assert snapshot.exists(instance)


def test_start_of_standby_is_refused_with_a_hint(tmp_path):
    instance, argv, _ = make_instance(tmp_path / "home", tmp_path)
    fake_snapshot(instance, argv)
    with pytest.raises(KindlingError, match="it is Standby") as e:
        trio.run(lifecycle.start, instance)
    assert "kindling restore snap" in e.value.hint and "kindling stop snap" in e.value.hint
    assert snapshot.exists(instance)


def test_stop_of_standby_drops_the_snapshot(tmp_path):
    instance, argv, _ = make_instance(tmp_path / "home", tmp_path)
    p = fake_snapshot(instance, argv)
    assert trio.run(lifecycle.stop, instance).state is State.STOPPED
    assert not p.dir.exists()
    assert [h["state"] for h in metadata.load(instance).history][-2:] == ["Standby", "Stopped"]


def test_delete_removes_the_snapshot(tmp_path):
    instance, argv, _ = make_instance(tmp_path / "home", tmp_path)
    p = fake_snapshot(instance, argv)
    trio.run(lifecycle.delete, instance)
    assert not p.dir.exists() and not instance.dir.exists()


def test_a_restored_snapshot_is_kept_but_is_no_longer_standby(tmp_path):
    instance, argv, _ = make_instance(tmp_path / "home", tmp_path)
    p = fake_snapshot(instance, argv)
    snapshot.mark_restored(instance)
    assert p.vmstate.exists() and p.restored.exists() and not snapshot.exists(instance)


def test_the_watchdog_is_off_for_a_restored_boot():
    meta = Metadata(id="0123456789ab", name="w", created_at=0, command=[], config={},
                    agent_skipped=True, argv=[], accel="tcg", log_max_bytes=1, log_keep=1,
                    boot=1, boot_requested_at=1)
    assert watchdog.EarlyBootWatchdog.for_boot(meta).armed
    meta.restored_at = 2
    assert not watchdog.EarlyBootWatchdog.for_boot(meta).armed


async def test_send_fd_passes_the_descriptor_with_getfd(tmp_path):
    """QMP getfd: the descriptor rides on the command's own message (SCM_RIGHTS)."""
    path = tmp_path / "qmp.sock"
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(os.fspath(path))
    listener.listen(1)
    data_file = tmp_path / "data"
    data_file.write_bytes(b"through the fd")
    received = {}

    async def server():
        conn, _ = await listener.accept()
        with conn:
            await conn.send(b'{"QMP": {}}\n')
            await conn.recv(4096)                                  # qmp_capabilities
            await conn.send(b'{"return": {}}\n')
            fds = array.array("i")
            msg, anc, _, _ = await conn.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload)
            received["message"] = json.loads(msg)
            received["content"] = os.read(fds[0], 100)
            os.close(fds[0])
            await conn.send(b'{"event": "X"}\n{"return": {}}\n')

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        async with await qmp.QMPClient.connect(path) as client:
            with open(data_file, "rb") as f:
                await client.send_fd("snap", f.fileno())
    listener.close()
    assert received == {"message": {"execute": "getfd", "arguments": {"fdname": "snap"}},
                        "content": b"through the fd"}
