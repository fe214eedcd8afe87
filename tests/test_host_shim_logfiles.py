"""host_shim/logfiles.py on real files: a fresh log per boot, and following a log.

Rotation of a live log needs QEMU (QMP chardev-change): that is exercised with a
real guest writing in tests/test_host_shim_lifecycle_vm.py.
"""

import os

from host_shim import logfiles
from host_shim.instance import Instance


def test_start_fresh_log_moves_the_old_boot_away(tmp_path):
    inst = Instance.create(tmp_path)
    inst.app_log.write_text("boot 1\n")
    since = logfiles.start_fresh_log(inst, keep=2)
    assert inst.app_log.read_text() == ""
    assert (inst.logs_dir / "app.log.1").read_text() == "boot 1\n"
    assert since == inst.app_log.stat().st_mtime_ns
    assert (inst.logs_dir / "app.log.1").stat().st_mtime_ns <= since
    inst.app_log.write_text("boot 2\n")
    logfiles.start_fresh_log(inst, keep=2)
    inst.app_log.write_text("boot 3\n")
    logfiles.start_fresh_log(inst, keep=2)           # keep=2: boot 1 is dropped
    assert sorted(p.name for p in inst.logs_dir.iterdir()) == ["app.log", "app.log.1",
                                                               "app.log.2"]
    assert (inst.logs_dir / "app.log.2").read_text() == "boot 2\n"
    assert (inst.logs_dir / "app.log.1").read_text() == "boot 3\n"


def test_an_empty_log_is_not_rotated(tmp_path):
    inst = Instance.create(tmp_path)
    logfiles.start_fresh_log(inst, keep=3)
    assert sorted(p.name for p in inst.logs_dir.iterdir()) == ["app.log"]


async def test_follower_reads_rotated_copies_then_a_growing_log(tmp_path):
    inst = Instance.create(tmp_path)
    (inst.logs_dir / "app.log.2").write_bytes(b"one\r\ntw")
    (inst.logs_dir / "app.log.1").write_bytes(b"o\r\nthr")
    inst.app_log.write_bytes(b"ee\r\n")
    follower = logfiles.LogFollower(inst, None)
    try:
        assert await follower.poll() == ["one", "two", "three"]
        assert await follower.poll() == []
        with open(inst.app_log, "ab", buffering=0) as f:
            f.write(b"four\r\nfi")
            assert await follower.poll() == ["four"]
            f.write(b"ve\r\nunterminated")
            assert await follower.poll() == ["five"]
        assert follower.flush() == ["unterminated"]
        assert follower.bytes_read == len(b"one\r\ntwo\r\nthree\r\nfour\r\nfive\r\nunterminated")
    finally:
        follower.close()


async def test_follower_skips_logs_of_earlier_boots(tmp_path):
    inst = Instance.create(tmp_path)
    (inst.logs_dir / "app.log.1").write_bytes(b"old boot\n")
    os.utime(inst.logs_dir / "app.log.1", ns=(1, 1))
    inst.app_log.write_bytes(b"new boot\n")
    follower = logfiles.LogFollower(inst, inst.app_log.stat().st_mtime_ns)
    try:
        assert await follower.poll() == ["new boot"]
    finally:
        follower.close()


async def test_follower_switches_files_on_rotation(tmp_path):
    """What the rotator does (logfiles.rotate_if_needed, minus asking QEMU to switch):
    the follower notices app.log is a new file, finishes the old one, carries on."""
    inst = Instance.create(tmp_path)
    inst.app_log.write_bytes(b"a\nb")
    follower = logfiles.LogFollower(inst, None)
    try:
        assert await follower.poll() == ["a"]
        with open(inst.app_log, "ab", buffering=0) as old:
            new = inst.logs_dir / logfiles.NEW_LOG
            new.write_bytes(b"")
            old.write(b"c\nd")                     # the last bytes before the switch
            os.rename(inst.app_log, inst.logs_dir / "app.log.1")
            os.rename(new, inst.app_log)
        with open(inst.app_log, "ab", buffering=0) as f:
            f.write(b"e\n")
        assert await follower.poll() == ["bc", "de"]
        assert follower.gaps == 0
    finally:
        follower.close()
