"""The early-boot watchdog (issue 15 §2): a boot that shows no sign of PID 1 is launched again.

`nohz=off` (host_shim/qemu.py) removed the known cause of the early-boot hang; this
is for whatever remains.  A launched guest that prints no KINDLING-STAGE line (nor
any other marker, on the console or the control channel) within the bound -- by
default EARLY_BOOT_TIMEOUT seconds after the guest was started -- is taken as hung
in the kernel: the VM is ended and launched again with the same disks and the same
command line, at most MAX_RELAUNCHES times per start request.  Each relaunch is
recorded (`Metadata.relaunches`, and the reason on the state history's Stopped
entry) and shown by `inspect`; `run` and `wait` say it on stderr.

Why relaunching is safe only then: until PID 1 prints its first stage line, only
the kernel has run, from the initrd; the overlay, the config disk and the volumes
are first mounted by PID 1 later on.  Once any stage line or marker is seen the
watchdog is off for that boot (a slow boot after that is the boot deadline's job,
`--boot-timeout`).  The last launch allowed is never ended by the watchdog.

The bound (`--early-boot-timeout`, default 30 s) is chosen from data: the first stage
line comes ~1-1.5 s after launch under TCG on a quiet machine, ~10 s at load 6 on this
project's shared 2-core machine (the kernel stage alone took 6.1 s there).  Wall time
alone would still take a starved boot for a hung one (8 guests booting at once on 2
cores), so the watchdog also asks how much CPU time QEMU has had: a guest hung in the
kernel spins (the int3 loop qemu.py describes keeps a vCPU thread busy), a starved one
has had little.  So a boot is taken as hung when the bound has passed and QEMU has used
at least half the bound in CPU seconds -- many times what a boot needs to print its
first stage line -- or, for a hang that does not spin (an idle vCPU waiting for an
interrupt that never comes), when IDLE_HANG_FACTOR times the bound has passed.  A false
alarm costs a relaunch, never a failure.  `--early-boot-timeout 0` turns it off.

The decision (`EarlyBootWatchdog`) is plain data fed by whoever follows the console
(lifecycle's `wait`, runner's Supervisor) and asked `due(now_ns)`; it never sleeps
and never reads a clock itself, so it is tested with a fake clock.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from initsys import protocol

from . import follow, options
from . import timeline as tl
from .metadata import Metadata

EARLY_BOOT_TIMEOUT = options.DEFAULT_EARLY_BOOT_TIMEOUT
MAX_RELAUNCHES = 2
CPU_SHARE = 0.5          # CPU seconds QEMU must have used, per second of the bound
IDLE_HANG_FACTOR = 4     # past this many bounds, a boot is hung whatever its CPU time
REASON_PREFIX = "early-boot watchdog"


def pid1_signs(batch: follow.Batch) -> bool:
    """Whether a batch shows PID 1 at work: a marker (trusted or not, any kind) or a line
    on the control channel.  Untrusted console markers count too: the watchdog must
    err towards not relaunching."""
    return bool(batch.markers or batch.control or follow.markers_in(batch.lines))


def relaunches_of_request(meta: Metadata) -> int:
    """How many times the current start request (create or start) was relaunched."""
    return sum(1 for r in meta.relaunches if r.get("requested") == meta.boot_requested_at)


def guest_started_ns(meta: Metadata) -> int | None:
    """When the current boot's guest was started (host ns), if it was."""
    for event in meta.events:
        if event.name == tl.GUEST_STARTED and meta.boot_requested_at is not None:
            return meta.boot_requested_at + int(event.at * 1e9)
    return None


@dataclass
class EarlyBootWatchdog:
    """Watches one boot: `see` every console batch, ask `due(now_ns)` in between."""
    boot: int
    started_ns: int | None          # the guest was started (None: not yet, or unknown)
    bound: float                    # seconds; 0: off
    armed: bool                     # relaunches are left for this start request
    console_lines: int = 0
    pid1_seen: bool = False

    @classmethod
    def for_boot(cls, meta: Metadata) -> "EarlyBootWatchdog":
        bound = float(meta.options.get("early_boot_timeout", EARLY_BOOT_TIMEOUT))
        # A restored boot is past its kernel's start: the watchdog has nothing to watch.
        return cls(boot=meta.boot, started_ns=guest_started_ns(meta), bound=bound,
                   armed=bound > 0 and relaunches_of_request(meta) < MAX_RELAUNCHES
                   and meta.restored_at is None)

    def see(self, batch: follow.Batch) -> None:
        self.console_lines += len(batch.lines)
        self.pid1_seen |= pid1_signs(batch)

    def due(self, now_ns: int, cpu_seconds: Callable[[], float | None]) -> str | None:
        """The reason to relaunch now, or None (PID 1 was seen, the bound has not
        passed, QEMU had too little CPU time to tell, no relaunch is left, or the
        watchdog is off).  `cpu_seconds()`: QEMU's CPU time so far (None: unknown)."""
        if not self.armed or self.pid1_seen or self.started_ns is None:
            return None
        waited = (now_ns - self.started_ns) / 1e9
        if waited < self.bound:
            return None
        cpu = cpu_seconds()
        if waited < IDLE_HANG_FACTOR * self.bound and (cpu is None
                                                      or cpu < CPU_SHARE * self.bound):
            return None
        seen = ("the console stayed silent" if not self.console_lines
                else f"{self.console_lines} console lines, none from PID 1")
        used = f", QEMU used {cpu:.1f} s of CPU" if cpu is not None else ""
        return (f"{REASON_PREFIX}: no boot stage line {waited:.0f} s after the guest "
                f"started ({seen}{used})")


def qemu_cpu_seconds(pid: int | None) -> float | None:
    """The CPU time (user + system) process `pid` has used, from /proc; None if unknown."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()    # after the command name, from field 3
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def describe(relaunch: dict) -> str:
    """One relaunch for `inspect` and messages: 'boot 1: <reason>'."""
    return f"boot {relaunch.get('boot', '?')}: {relaunch.get('reason', '(no reason recorded)')}"
