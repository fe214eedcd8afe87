"""image_build/kmod.py's _place: each packing of a source module (.ko, .ko.xz, .ko.gz,
.ko.zst) into the staging tree, plain for the boot closure and xz-packed for an
on-demand group -- streamed, with nothing else left in the staging tree, in the xz
that PID 1's initsys/kmod.py unpacks."""

import gzip
import lzma
import os
import subprocess

import pytest

from image_build import kmod
from initsys import kmod as pid1_kmod

RELEASE = "6.1.0-test-amd64"
ELF = b"\x7fELF" + os.urandom(200_000) + bytes(300_000)   # more than one copy chunk


def pack(kind: str, path):
    if kind == ".ko.xz":
        path.write_bytes(lzma.compress(ELF))
    elif kind == ".ko.gz":
        path.write_bytes(gzip.compress(ELF))
    elif kind == ".ko.zst":
        subprocess.run(["zstd", "-q", "-o", str(path)], input=ELF, check=True, timeout=60)
    else:
        path.write_bytes(ELF)


@pytest.fixture(params=[".ko", ".ko.xz", ".ko.gz", ".ko.zst"])
def source(request, tmp_path):
    """(basedir, the source module) in a kernel package's tree."""
    basedir = tmp_path / "kernel"
    ko = basedir / "lib" / "modules" / RELEASE / "kernel" / "fs" / "nfs" / ("nfs" + request.param)
    ko.parent.mkdir(parents=True)
    pack(request.param, ko)
    return basedir, ko


def staged_files(stage):
    return sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())


def test_a_boot_module_is_staged_plain(source, tmp_path):
    basedir, ko = source
    stage = tmp_path / "stage"
    in_initrd = kmod._place(ko, basedir, RELEASE, stage)
    assert in_initrd == f"/usr/lib/modules/{RELEASE}/kernel/fs/nfs/nfs.ko"
    assert staged_files(stage) == [in_initrd.lstrip("/")]
    dest = stage / in_initrd.lstrip("/")
    assert dest.read_bytes() == ELF
    assert dest.stat().st_mode & 0o777 == 0o644


def test_an_on_demand_module_is_streamed_into_the_xz_pid1_unpacks(source, tmp_path):
    basedir, ko = source
    stage = tmp_path / "stage"
    in_initrd = kmod._place(ko, basedir, RELEASE, stage, packed=True)
    assert in_initrd == f"/usr/lib/modules/{RELEASE}/kernel/fs/nfs/nfs.ko.xz"
    assert staged_files(stage) == [in_initrd.lstrip("/")]     # no plain copy left behind
    dest = stage / in_initrd.lstrip("/")
    assert dest.stat().st_mode & 0o777 == 0o644
    # the same preset and check as before the streaming: byte for byte lzma.compress's
    assert dest.read_bytes() == lzma.compress(ELF, preset=9 | lzma.PRESET_EXTREME)
    fd = pid1_kmod._open(str(dest))
    try:
        assert os.pread(fd, len(ELF) + 1, 0) == ELF
    finally:
        os.close(fd)
