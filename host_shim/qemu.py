"""The QEMU command line for a Kindling microVM, built from a frozen spec.

Per-architecture facts (machine type, CPU model per accelerator, console, disk
device) live in one table, ARCHES.  Everything else is the same everywhere:

* direct kernel boot (`-kernel -initrd -append`), no firmware menu, no defaults:
  `-nodefaults -no-user-config -display none`;
* `-no-reboot` with `panic=-1` on the kernel command line, so a guest panic or
  reboot ends QEMU instead of looping;
* the serial console goes to a file that QEMU itself appends to, so the console
  log survives the shim (a later detached mode relies on that);
* a QMP control socket for a clean `quit`;
* virtio-blk disks in the order of PROTOCOL.md §1, each with a `serial=`.
"""

import os
import platform
import shutil
from dataclasses import dataclass, field

from .accel import Accel
from .errors import die

# Kernel arguments measured to help boot time (shared/ENVIRONMENT.md).
BASE_CMDLINE = (
    "console=ttyS0", "panic=-1", "quiet", "cryptomgr.notests", "8250.nr_uarts=1",
    "tsc=reliable", "no_timer_check", "lpj=8000000",
)

DEFAULT_MEMORY_MIB = 512
DEFAULT_CPUS = 1


@dataclass(frozen=True)
class Arch:
    binary: str
    machine: str
    cpu: dict[Accel, str]      # TCG needs rdrand (`max` has it) for guest entropy
    console: str
    block_device: str
    install_hint: str


ARCHES: dict[str, Arch] = {
    "x86_64": Arch(
        binary="qemu-system-x86_64",
        machine="pc",
        cpu={Accel.TCG: "max", Accel.KVM: "host"},
        console="ttyS0",
        block_device="virtio-blk-pci",
        install_hint="apt-get install qemu-system-x86",
    ),
}


def host_arch() -> str:
    return platform.machine()


def arch_for(name: str) -> Arch:
    try:
        return ARCHES[name]
    except KeyError:
        die(f"unsupported architecture {name!r}",
            hint=f"supported: {', '.join(sorted(ARCHES))}")


@dataclass(frozen=True)
class Disk:
    path: str
    serial: str                  # virtio-blk serial, at most 20 bytes
    readonly: bool = False
    scratch: bool = False        # thrown away after the run: no need to flush to the host

    def __post_init__(self):
        if not self.serial or len(self.serial.encode()) > 20 or "," in self.serial:
            raise ValueError(f"invalid virtio-blk serial {self.serial!r}")


@dataclass(frozen=True)
class VMSpec:
    kernel: str
    initrd: str
    disks: tuple[Disk, ...]
    console_log: str
    qmp_socket: str
    accel: Accel
    memory_mib: int = DEFAULT_MEMORY_MIB
    cpus: int = DEFAULT_CPUS
    cmdline_extra: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()     # extra devices etc., appended verbatim
    name: str | None = None
    arch: str = field(default_factory=host_arch)

    def __post_init__(self):
        if self.accel not in (Accel.KVM, Accel.TCG):
            raise ValueError(f"accel must be resolved to kvm or tcg, got {self.accel!r}")


def _opt(value: str | os.PathLike) -> str:
    """Escape a value inside a QEMU `key=value,...` option: commas are doubled."""
    return os.fspath(value).replace(",", ",,")


def kernel_cmdline(spec: VMSpec) -> str:
    return " ".join(BASE_CMDLINE + tuple(spec.cmdline_extra))


def disk_args(arch: Arch, index: int, disk: Disk) -> list[str]:
    drive_id = f"disk{index}"
    drive = [f"file={_opt(disk.path)}", "if=none", f"id={drive_id}", "format=raw"]
    if disk.readonly:
        drive.append("readonly=on")
    elif disk.scratch:
        drive.append("cache=unsafe")
    return [
        "-drive", ",".join(drive),
        "-device", f"{arch.block_device},drive={drive_id},serial={disk.serial}",
    ]


def build_argv(spec: VMSpec, binary: str) -> list[str]:
    arch = arch_for(spec.arch)
    argv = [
        binary,
        "-machine", arch.machine,
        "-accel", spec.accel.value,
        "-cpu", arch.cpu[spec.accel],
        "-m", str(spec.memory_mib),
        "-smp", str(spec.cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
    ]
    if spec.name:
        argv += ["-name", _opt(spec.name)]
    argv += [
        "-kernel", spec.kernel,
        "-initrd", spec.initrd,
        "-append", kernel_cmdline(spec),
        "-chardev", f"file,id=con,path={_opt(spec.console_log)},append=on",
        "-serial", "chardev:con",
        # Same as `-qmp unix:PATH,server=on,wait=off`, but the -chardev form
        # lets a path contain a comma (escaped as `,,`).
        "-chardev", f"socket,id=qmp,path={_opt(spec.qmp_socket)},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
    ]
    for index, disk in enumerate(spec.disks):
        argv += disk_args(arch, index, disk)
    argv += list(spec.extra_args)
    return argv


def find_qemu(arch_name: str | None = None) -> str:
    arch = arch_for(arch_name or host_arch())
    path = shutil.which(arch.binary)
    if path is None:
        die(f"QEMU not installed: {arch.install_hint}",
            hint=f"{arch.binary} was not found on PATH")
    return path
