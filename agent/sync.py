"""sync: the host sets the guest's wall clock and reseeds its RNG (after a restore).

A guest restored from a snapshot wakes up with the snapshot's wall clock and the
snapshot's kernel RNG state: without help, two restores of one snapshot would
hand out the same "random" bytes.  The host (host_shim/guest_sync.py) therefore
sends, right after QMP `cont`:

    ["open", sid, {"op": "sync", "time_ns": <host CLOCK_REALTIME>, "entropy": <bytes>}]
    -> ["result", sid, {"clock_step_ns": int, "entropy_bytes": int, "entropy_bits": int,
                        "reseeded": true}]

and the agent, in this order, sets CLOCK_REALTIME to `time_ns`, writes `entropy`
into the kernel's input pool *with credit* (ioctl RNDADDENTROPY on /dev/urandom)
and forces the ChaCha CRNG to reseed from that pool now (ioctl RNDRESEEDCRNG), so
the very next read of /dev/urandom or getrandom() already depends on the host's
bytes.  Both ioctls and clock_settime need root (CAP_SYS_ADMIN, CAP_SYS_TIME):
the agent runs as root in both init modes (systemd_units/kindling-agent.service
sets no User= and drops no capability).

Why the agent and not a device: QEMU's vmgenid (whose Linux driver reseeds the
CRNG on a VM generation change) is wired into the ACPI tables of pc/q35 only,
not into `microvm`, Kindling's default machine; a virtio-rng device feeds the
pool but does not force a reseed, so the CRNG could keep its snapshot state
until its next scheduled reseed (up to a minute).  The clock needs the agent
anyway (nothing steps CLOCK_REALTIME after a restore, ENVIRONMENT.md "Snapshots").

The ioctl numbers and struct rand_pool_info come from the kernel's uapi
<linux/random.h> and are written out here (Python's stdlib has no binding):
    RNDADDENTROPY = _IOW('R', 0x03, int[2]),  RNDRESEEDCRNG = _IO('R', 0x07)
    struct rand_pool_info { int entropy_count /* bits */; int buf_size /* bytes */; __u32 buf[]; }
The system calls are in apply() alone, so everything else is tested on the host.
"""

import fcntl
import os
import struct
import time

from agent.execs import RequestError
from agent.wire import field

_IOC_WRITE = 1
RNDADDENTROPY = (_IOC_WRITE << 30) | (struct.calcsize("2i") << 16) | (ord("R") << 8) | 0x03
RNDRESEEDCRNG = (ord("R") << 8) | 0x07
RANDOM_DEVICE = "/dev/urandom"

MIN_ENTROPY = 16                # bytes: below this a reseed is not worth the name
MAX_ENTROPY = 512               # the kernel's input pool holds 256 bits; more only costs time
MIN_TIME_NS = 946684800 * 10**9          # 2000-01-01: a host clock before that is broken
MAX_TIME_NS = 4102444800 * 10**9         # 2100-01-01


def parse(body):
    """(time_ns, entropy) of a sync request, checked; RequestError names the bad field."""
    time_ns = field(body, "time_ns", int, required=True, where="sync")
    entropy = field(body, "entropy", bytes, required=True, where="sync")
    if not MIN_TIME_NS <= time_ns < MAX_TIME_NS:
        raise RequestError("invalid", f"sync.time_ns: {time_ns} is not a time between 2000 and 2100"
                           " in ns since the epoch", "time_ns")
    if not MIN_ENTROPY <= len(entropy) <= MAX_ENTROPY:
        raise RequestError("invalid", f"sync.entropy: {len(entropy)} bytes, expected"
                           f" {MIN_ENTROPY}..{MAX_ENTROPY}", "entropy")
    return time_ns, entropy


def rand_pool_info(entropy):
    """struct rand_pool_info for RNDADDENTROPY, every byte credited as 8 bits.  A bytearray:
    fcntl.ioctl passes a mutable buffer as is (an immutable one is copied, 1024 bytes at most)."""
    return bytearray(struct.pack("ii", len(entropy) * 8, len(entropy)) + entropy)


def apply(time_ns, pool_info):
    """The system calls: step CLOCK_REALTIME, add and credit entropy, reseed the CRNG.

    Returns the clock step in ns (new time minus the guest's time just before).
    OSError names the call that failed in its filename.
    """
    before = time.clock_gettime_ns(time.CLOCK_REALTIME)
    try:
        time.clock_settime_ns(time.CLOCK_REALTIME, time_ns)
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror} (needs CAP_SYS_TIME)",
                      "clock_settime(CLOCK_REALTIME)") from None
    fd = os.open(RANDOM_DEVICE, os.O_WRONLY | os.O_CLOEXEC)
    try:
        for name, request, arg in (("RNDADDENTROPY", RNDADDENTROPY, pool_info),
                                   ("RNDRESEEDCRNG", RNDRESEEDCRNG, 0)):
            try:
                fcntl.ioctl(fd, request, arg)
            except OSError as e:
                raise OSError(e.errno, f"{e.strerror} (needs CAP_SYS_ADMIN)",
                              f"ioctl {name} on {RANDOM_DEVICE}") from None
    finally:
        os.close(fd)
    return time_ns - before


async def run_sync(session, body, agent):
    time_ns, entropy = parse(body)
    step = apply(time_ns, rand_pool_info(entropy))
    await session.send("result", {"clock_step_ns": step, "entropy_bytes": len(entropy),
                                  "entropy_bits": len(entropy) * 8, "reseeded": True})
