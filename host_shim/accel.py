"""Choose the QEMU accelerator: KVM when it really works, TCG otherwise.

"Works" means /dev/kvm opens read-write AND a KVM_CREATE_VM ioctl succeeds: a
device node can exist and open while KVM is still unusable (no VT-x/SVM, or a
module loaded without hardware support).  Note that working KVM is not always
fast KVM: nested KVM on some hosts is slower than TCG, hence `--accel tcg`.
"""

import enum
import errno
import fcntl
import os

from . import log
from .errors import die

KVM_DEVICE = "/dev/kvm"
# From <linux/kvm.h>: _IO(KVMIO=0xAE, 0x01).
KVM_CREATE_VM = 0xAE01

ENV_VAR = "KINDLING_ACCEL"


class Accel(enum.StrEnum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


def kvm_problem(device: str = KVM_DEVICE) -> str | None:
    """Why KVM cannot be used (missing / no permission / create failed), or None if it can."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"{device} missing"
    except PermissionError:
        return f"no permission to open {device} read-write"
    except OSError as e:
        return f"cannot open {device}: {e.strerror}"
    try:
        vm_fd = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
    except OSError as e:
        return f"create failed on {device}: {e.strerror or errno.errorcode.get(e.errno, e.errno)}"
    else:
        os.close(vm_fd)
    finally:
        os.close(fd)
    return None


def default_accel() -> str:
    """The default for --accel: $KINDLING_ACCEL, else auto."""
    return os.environ.get(ENV_VAR) or Accel.AUTO.value


def parse_accel(value: str) -> Accel:
    try:
        return Accel(value.strip().lower())
    except ValueError:
        die(f"unknown accelerator {value!r}", hint="use one of: auto, kvm, tcg "
            f"(from --accel or ${ENV_VAR})")


def resolve(requested: str | Accel, device: str = KVM_DEVICE) -> Accel:
    """Turn auto/kvm/tcg into kvm or tcg; note a fallback on stderr, fail if forced KVM is unusable."""
    accel = parse_accel(requested) if isinstance(requested, str) else requested
    if accel is Accel.TCG:
        return Accel.TCG
    problem = kvm_problem(device)
    if problem is None:
        return Accel.KVM
    if accel is Accel.KVM:
        die(f"KVM requested but unusable: {problem}",
            hint="use --accel tcg (slow) or --accel auto")
    log.note(f"KVM unavailable ({problem}); using TCG (slow)")
    return Accel.TCG
