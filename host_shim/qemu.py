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

Machine types (MACHINES): `microvm` (the default) has no PCI bus and no
firmware tables to walk; its virtio devices sit on MMIO.  Measured under TCG
(ENVIRONMENT.md and bench/boot.py) it reaches PID 1 ~0.7 s sooner than `pc`
and the virtio modules load in ~0.45 s instead of ~1.2 s.  It needs
`tsc_early_khz` (the host's TSC frequency), or TSC calibration against the PIT
hangs in a few percent of TCG boots.  `pc` stays available (`--machine pc`).

Under TCG the kernel also gets `nohz=off` (TCG_CMDLINE).  QEMU runs one thread
per vCPU (MTTCG), and the guest kernel's live code patching races with
translation: while one vCPU patches a static key (`text_poke_bp`: an int3 first,
then the new bytes, then the first byte), another vCPU can translate that text
with the transient int3 in it and keep the translated block after the last
write.  Its int3 handler then finds no int3 in memory, backs up and re-executes
the stale block: that vCPU loops on an int3 that is no longer there, forever.
Seen (bench/soak.py) as a boot that stops ~1 s into the kernel: an RCU stall,
CPU 0 in `exc_int3` from `hrtimer_start_range_ns` in the idle loop, right after
the switch to a high-resolution clocksource.  That switch makes the kernel turn
on the `timers_nohz_active`/`timers_migration_enabled` keys, which patch exactly
the hrtimer code every idle vCPU runs.  With `nohz=off` the kernel never turns
them on (tick_nohz_activate returns at once), so the hottest patch site of a
boot is never patched.  The cost is a periodic tick on idle vCPUs, which is why
KVM guests (no translation, no race) do not get it.  `-accel tcg,thread=single`
would remove every such race, but the two vCPUs then share one host thread: on
this loaded host 4 of 6 boots outlived 90 s, against a 56 s median for MTTCG.
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

# Only under TCG: no live patching of the idle loop's hrtimer code (module docstring).
TCG_CMDLINE = ("nohz=off",)

DEFAULT_MEMORY_MIB = 512
DEFAULT_CPUS = 2  # the ordered setup thread overlaps the trio import (initsys/main.py)


@dataclass(frozen=True)
class Machine:
    option: str                # the -machine value
    block_device: str          # virtio device names on this machine's bus
    serial_device: str
    net_device: str
    vsock_device: str
    needs_tsc_khz: bool = False


MACHINES: dict[str, Machine] = {
    "microvm": Machine("microvm,rtc=on", "virtio-blk-device", "virtio-serial-device",
                       "virtio-net-device", "vhost-vsock-device", needs_tsc_khz=True),
    "pc": Machine("pc", "virtio-blk-pci", "virtio-serial-pci", "virtio-net-pci",
                  "vhost-vsock-pci"),
}
DEFAULT_MACHINE = "microvm"


@dataclass(frozen=True)
class Arch:
    binary: str
    cpu: dict[Accel, str]      # TCG needs rdrand (`max` has it) for guest entropy
    console: str
    install_hint: str


ARCHES: dict[str, Arch] = {
    "x86_64": Arch(
        binary="qemu-system-x86_64",
        cpu={Accel.TCG: "max", Accel.KVM: "host"},
        console="ttyS0",
        install_hint="apt-get install qemu-system-x86",
    ),
}


def machine_for(name: str) -> Machine:
    try:
        return MACHINES[name]
    except KeyError:
        die(f"unknown machine type {name!r}", hint=f"choose one of: {', '.join(MACHINES)}")


def host_tsc_khz(cpuinfo: str = "/proc/cpuinfo") -> int | None:
    """The host TSC frequency in kHz (sysfs when the kernel exports it, else cpuinfo)."""
    try:
        with open("/sys/devices/system/cpu/cpu0/tsc_freq_khz") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        pass
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":", 1)[1]) * 1000)
    except (OSError, ValueError):
        pass
    return None


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
    machine: str = DEFAULT_MACHINE
    tsc_khz: int | None = field(default_factory=host_tsc_khz)

    def __post_init__(self):
        if self.accel not in (Accel.KVM, Accel.TCG):
            raise ValueError(f"accel must be resolved to kvm or tcg, got {self.accel!r}")


def opt_value(value: str | os.PathLike) -> str:
    """Escape a value inside a QEMU `key=value,...` option: commas are doubled."""
    return os.fspath(value).replace(",", ",,")


def kernel_cmdline(spec: VMSpec) -> str:
    args = BASE_CMDLINE + (TCG_CMDLINE if spec.accel is Accel.TCG else ())
    if machine_for(spec.machine).needs_tsc_khz and spec.tsc_khz:
        args += (f"tsc_early_khz={spec.tsc_khz}",)
    return " ".join(args + tuple(spec.cmdline_extra))


def disk_args(machine: Machine, index: int, disk: Disk) -> list[str]:
    drive_id = f"disk{index}"
    drive = [f"file={opt_value(disk.path)}", "if=none", f"id={drive_id}", "format=raw"]
    if disk.readonly:
        drive.append("readonly=on")
    elif disk.scratch:
        drive.append("cache=unsafe")
    return [
        "-drive", ",".join(drive),
        "-device", f"{machine.block_device},drive={drive_id},serial={disk.serial}",
    ]


def build_argv(spec: VMSpec, binary: str) -> list[str]:
    arch = arch_for(spec.arch)
    machine = machine_for(spec.machine)
    argv = [
        binary,
        "-machine", machine.option,
        "-accel", spec.accel.value,
        "-cpu", arch.cpu[spec.accel],
        "-m", str(spec.memory_mib),
        "-smp", str(spec.cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
    ]
    if spec.name:
        argv += ["-name", opt_value(spec.name)]
    argv += [
        "-kernel", spec.kernel,
        "-initrd", spec.initrd,
        "-append", kernel_cmdline(spec),
        "-chardev", f"file,id=con,path={opt_value(spec.console_log)},append=on",
        "-serial", "chardev:con",
        # Same as `-qmp unix:PATH,server=on,wait=off`, but the -chardev form
        # lets a path contain a comma (escaped as `,,`).
        "-chardev", f"socket,id=qmp,path={opt_value(spec.qmp_socket)},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
    ]
    for index, disk in enumerate(spec.disks):
        argv += disk_args(machine, index, disk)
    argv += list(spec.extra_args)
    return argv


def with_kernel_args(argv: list[str], extra: tuple[str, ...]) -> list[str]:
    """`argv` (from `command_line`) with `extra` appended to its kernel command line."""
    if not extra:
        return list(argv)
    at = argv.index("-append") + 1
    return [*argv[:at], " ".join((argv[at], *extra)), *argv[at + 1:]]


def find_qemu(arch_name: str | None = None) -> str:
    arch = arch_for(arch_name or host_arch())
    path = shutil.which(arch.binary)
    if path is None:
        die(f"QEMU not installed: {arch.install_hint}",
            hint=f"{arch.binary} was not found on PATH")
    return path
