"""initsys/kmod.py: what finit_module() is given (the real syscall needs a guest: the NFS
VM test loads the packed group for real)."""

import errno
import lzma
import os

import pytest

from initsys import kmod, libc


@pytest.fixture
def loaded(monkeypatch):
    """The bytes behind each descriptor PID 1 hands to finit_module()."""
    seen = []

    def finit_module(fd, params=b""):
        seen.append(os.pread(fd, 1 << 20, 0))
        return 0

    monkeypatch.setattr(libc, "finit_module", finit_module)
    return seen


def test_a_plain_module_is_loaded_from_its_file(tmp_path, loaded):
    ko = tmp_path / "a.ko"
    ko.write_bytes(b"\x7fELF plain")
    kmod.load(str(ko))
    assert loaded == [b"\x7fELF plain"]


def test_a_packed_on_demand_module_is_loaded_unpacked(tmp_path, loaded):
    elf = b"\x7fELF" + os.urandom(300_000)   # bigger than one write of a pipe
    ko = tmp_path / "nfs.ko.xz"
    ko.write_bytes(lzma.compress(elf))
    kmod.load(str(ko))
    assert loaded == [elf]


def test_a_module_already_loaded_is_fine_another_error_names_it(tmp_path, monkeypatch):
    ko = tmp_path / "b.ko"
    ko.write_bytes(b"\x7fELF")
    codes = iter([errno.EEXIST, errno.ENOEXEC])

    def finit_module(fd, params=b""):
        raise OSError(next(codes), "x")

    monkeypatch.setattr(libc, "finit_module", finit_module)
    kmod.load(str(ko))
    with pytest.raises(OSError, match="b.ko"):
        kmod.load(str(ko))
