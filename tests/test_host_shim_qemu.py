"""host_shim/qemu.py: the QEMU command line."""

import pytest

from host_shim import qemu
from host_shim.accel import Accel
from host_shim.errors import KindlingError


def spec(**overrides):
    base = dict(
        kernel="/c/vmlinuz", initrd="/c/initrd", console_log="/i/logs/app.log",
        qmp_socket="/i/qmp.sock", accel=Accel.TCG, arch="x86_64", machine="pc",
        disks=(qemu.Disk("/c/rootfs.img", "rootfs", readonly=True),
               qemu.Disk("/i/overlay.img", "overlay", scratch=True),
               qemu.Disk("/i/config.img", "config", readonly=True)),
    )
    base.update(overrides)
    return qemu.VMSpec(**base)


def option(argv, flag):
    """Every value given to `flag` in argv."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def test_argv_starts_with_binary_and_has_fixed_options():
    argv = qemu.build_argv(spec(), "/usr/bin/qemu-system-x86_64")
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    for flag in ("-nodefaults", "-no-user-config", "-no-reboot"):
        assert flag in argv
    assert option(argv, "-display") == ["none"]
    assert option(argv, "-machine") == ["pc"]
    assert option(argv, "-kernel") == ["/c/vmlinuz"]
    assert option(argv, "-initrd") == ["/c/initrd"]
    assert all(isinstance(a, str) for a in argv)


@pytest.mark.parametrize("machine, option_value, block, tsc", [
    ("microvm", "microvm,rtc=on", "virtio-blk-device", " tsc_early_khz=2596000"),
    ("pc", "pc", "virtio-blk-pci", ""),
])
def test_machine_table(machine, option_value, block, tsc):
    argv = qemu.build_argv(spec(machine=machine, tsc_khz=2596000), "qemu")
    assert option(argv, "-machine") == [option_value]
    assert all(d.startswith(block + ",") for d in option(argv, "-device"))
    assert option(argv, "-append")[0].endswith("lpj=8000000 nohz=off" + tsc)


def test_default_machine_is_microvm():
    assert qemu.VMSpec(kernel="k", initrd="i", disks=(), console_log="c", qmp_socket="q",
                       accel=Accel.TCG).machine == "microvm"


def test_unknown_machine_is_a_clear_error():
    with pytest.raises(KindlingError, match="unknown machine type 'q35x'"):
        qemu.build_argv(spec(machine="q35x"), "qemu")


def test_host_tsc_khz_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu MHz\t\t: 2596.138\n")
    khz = qemu.host_tsc_khz(str(cpuinfo))
    assert khz is not None and khz > 1000


@pytest.mark.parametrize("accel, cpu", [(Accel.TCG, "max"), (Accel.KVM, "host")])
def test_cpu_per_accel(accel, cpu):
    argv = qemu.build_argv(spec(accel=accel), "qemu")
    assert option(argv, "-accel") == [accel.value]
    assert option(argv, "-cpu") == [cpu]


@pytest.mark.parametrize("machine", ["microvm", "pc"])
@pytest.mark.parametrize("accel, nohz_off", [(Accel.TCG, True), (Accel.KVM, False)])
def test_nohz_off_only_under_tcg(machine, accel, nohz_off):
    """TCG: no live patching of the idle loop's hrtimer code (the int3 boot hang, issue 15)."""
    cmdline = option(qemu.build_argv(spec(machine=machine, accel=accel), "qemu"), "-append")[0]
    assert ("nohz=off" in cmdline.split()) is nohz_off


def test_unresolved_accel_rejected():
    with pytest.raises(ValueError):
        spec(accel=Accel.AUTO)


@pytest.mark.parametrize("memory, cpus", [(512, 1), (2048, 4)])
def test_memory_and_cpus(memory, cpus):
    argv = qemu.build_argv(spec(memory_mib=memory, cpus=cpus), "qemu")
    assert option(argv, "-m") == [str(memory)]
    assert option(argv, "-smp") == [str(cpus)]


def test_defaults():
    s = spec()
    assert (s.memory_mib, s.cpus) == (512, 2)


@pytest.mark.parametrize("extra, cmdline", [
    ((), "console=ttyS0 panic=-1 quiet cryptomgr.notests 8250.nr_uarts=1 tsc=reliable "
         "no_timer_check lpj=8000000 nohz=off"),
    (("kindling.debug=1",), "console=ttyS0 panic=-1 quiet cryptomgr.notests 8250.nr_uarts=1 "
                            "tsc=reliable no_timer_check lpj=8000000 nohz=off kindling.debug=1"),
])
def test_kernel_cmdline(extra, cmdline):
    argv = qemu.build_argv(spec(cmdline_extra=extra), "qemu")
    assert option(argv, "-append") == [cmdline]


def test_console_and_qmp():
    argv = qemu.build_argv(spec(), "qemu")
    assert option(argv, "-serial") == ["chardev:con"]
    assert option(argv, "-chardev") == [
        "file,id=con,path=/i/logs/app.log,append=on",
        "socket,id=qmp,path=/i/qmp.sock,server=on,wait=off",
    ]
    assert option(argv, "-mon") == ["chardev=qmp,mode=control"]


def test_commas_in_paths_are_escaped():
    argv = qemu.build_argv(spec(console_log="/a,b/app.log", qmp_socket="/a,b/q.sock",
                                disks=(qemu.Disk("/a,b/r.img", "rootfs", readonly=True),)),
                           "qemu")
    chardevs = option(argv, "-chardev")
    assert chardevs[0] == "file,id=con,path=/a,,b/app.log,append=on"
    assert "path=/a,,b/q.sock" in chardevs[1]
    assert option(argv, "-drive")[0].startswith("file=/a,,b/r.img,")


DISK_CASES = [
    # (disks, expected -drive values, expected -device values)
    ((qemu.Disk("/r.img", "rootfs", readonly=True),),
     ["file=/r.img,if=none,id=disk0,format=raw,readonly=on"],
     ["virtio-blk-pci,drive=disk0,serial=rootfs"]),
    ((qemu.Disk("/r.img", "rootfs", readonly=True), qemu.Disk("/o.img", "overlay", scratch=True),
      qemu.Disk("/c.img", "config", readonly=True), qemu.Disk("/v0.img", "vol-0"),
      qemu.Disk("/v1.img", "vol-1", readonly=True)),
     ["file=/r.img,if=none,id=disk0,format=raw,readonly=on",
      "file=/o.img,if=none,id=disk1,format=raw,cache=unsafe",
      "file=/c.img,if=none,id=disk2,format=raw,readonly=on",
      "file=/v0.img,if=none,id=disk3,format=raw",
      "file=/v1.img,if=none,id=disk4,format=raw,readonly=on"],
     ["virtio-blk-pci,drive=disk0,serial=rootfs", "virtio-blk-pci,drive=disk1,serial=overlay",
      "virtio-blk-pci,drive=disk2,serial=config", "virtio-blk-pci,drive=disk3,serial=vol-0",
      "virtio-blk-pci,drive=disk4,serial=vol-1"]),
    ((), [], []),
]


@pytest.mark.parametrize("disks, drives, devices", DISK_CASES)
def test_disks_in_order_with_serials(disks, drives, devices):
    argv = qemu.build_argv(spec(disks=disks), "qemu")
    assert option(argv, "-drive") == drives
    assert option(argv, "-device") == devices


@pytest.mark.parametrize("serial", ["", "x" * 21, "a,b"])
def test_bad_serial_rejected(serial):
    with pytest.raises(ValueError):
        qemu.Disk("/x.img", serial)


def test_extra_args_and_name():
    argv = qemu.build_argv(spec(extra_args=("-device", "virtio-serial-pci"), name="kindling-1"),
                           "qemu")
    assert argv[-2:] == ["-device", "virtio-serial-pci"]
    assert option(argv, "-name") == ["kindling-1"]


def test_arch_table_covers_host_fields():
    for arch in qemu.ARCHES.values():
        assert set(arch.cpu) == {Accel.TCG, Accel.KVM}
    assert qemu.ARCHES["x86_64"].cpu[Accel.TCG] == "max"   # rdrand for guest entropy


def test_unknown_arch():
    with pytest.raises(KindlingError, match="unsupported architecture"):
        qemu.build_argv(spec(arch="pdp11"), "qemu")


def test_find_qemu_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KindlingError) as info:
        qemu.find_qemu("x86_64")
    assert info.value.message == "QEMU not installed: apt-get install qemu-system-x86"


def test_find_qemu_on_path(tmp_path, monkeypatch):
    binary = tmp_path / "qemu-system-x86_64"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert qemu.find_qemu("x86_64") == str(binary)
