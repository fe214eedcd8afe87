"""host_shim/accel.py: choosing KVM or TCG."""

import os

import pytest

from host_shim import accel
from host_shim.accel import Accel
from host_shim.errors import KindlingError


def test_missing_device_falls_back_to_tcg_with_note(tmp_path, capsys):
    missing = tmp_path / "kvm"
    assert accel.resolve("auto", device=str(missing)) is Accel.TCG
    err = capsys.readouterr().err
    assert err == f"kindling: KVM unavailable ({missing} missing); using TCG (slow)\n"


def test_device_that_cannot_create_vm(tmp_path, capsys):
    fake = tmp_path / "kvm"
    fake.write_bytes(b"")    # opens read-write, but the ioctl fails (ENOTTY)
    problem = accel.kvm_problem(str(fake))
    assert problem.startswith(f"create failed on {fake}")
    assert accel.resolve(Accel.AUTO, device=str(fake)) is Accel.TCG
    assert "using TCG (slow)" in capsys.readouterr().err


def test_no_permission(monkeypatch):
    def deny(path, flags, *args):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(os, "open", deny)
    assert accel.kvm_problem("/dev/kvm") == "no permission to open /dev/kvm read-write"


def test_forced_kvm_on_missing_device_is_an_error(tmp_path, capsys):
    with pytest.raises(KindlingError) as info:
        accel.resolve("kvm", device=str(tmp_path / "kvm"))
    assert "KVM requested but unusable" in info.value.message
    assert "missing" in info.value.message
    assert "--accel tcg" in info.value.hint
    assert capsys.readouterr().err == ""


def test_tcg_never_probes(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(accel, "kvm_problem", lambda device: pytest.fail("probed KVM"))
    assert accel.resolve("tcg", device=str(tmp_path / "kvm")) is Accel.TCG
    assert capsys.readouterr().err == ""


def test_usable_kvm_is_chosen(monkeypatch, capsys):
    monkeypatch.setattr(accel, "kvm_problem", lambda device: None)
    assert accel.resolve("auto") is Accel.KVM
    assert accel.resolve("KVM") is Accel.KVM
    assert capsys.readouterr().err == ""


def test_unknown_accel():
    with pytest.raises(KindlingError, match="unknown accelerator 'hvf'"):
        accel.resolve("hvf")


def test_default_from_environment(monkeypatch):
    monkeypatch.delenv(accel.ENV_VAR, raising=False)
    assert accel.default_accel() == "auto"
    monkeypatch.setenv(accel.ENV_VAR, "tcg")
    assert accel.default_accel() == "tcg"


def test_real_device_probe():
    """Runs on every machine: with /dev/kvm the real ioctl answers, without it the
    problem is named (no skip)."""
    problem = accel.kvm_problem()
    if not os.path.exists("/dev/kvm"):
        assert problem == "/dev/kvm missing"
    elif not os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert problem == "no permission to open /dev/kvm read-write"
    else:       # it opens: usable, or the KVM_CREATE_VM ioctl failed (nested, disabled)
        assert problem is None or problem.startswith("create failed on /dev/kvm: "), problem
