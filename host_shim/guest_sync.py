"""After a restore: set the guest's wall clock from the host's and reseed its RNG.

The restore (QMP `cont`) calls `await after_restore(instance)` before anything may
exec in the guest: cont -> sync -> exec allowed (docs/protocol.md, "After a
restore").  It sends the agent's `sync` operation (agent/sync.py,
docs/agent-protocol.md §6.5) over the instance's virtio-serial socket: the host's
CLOCK_REALTIME, read as the request is built (the last moment before it is sent),
and SYNC_ENTROPY bytes of os.urandom, which the guest credits to its kernel pool
before forcing its CRNG to reseed, so two restores of one snapshot diverge.

The host client reconnects by itself when its first hello goes unanswered, as it
may be right after a restore (ENVIRONMENT.md "Snapshots"), within SYNC_TIMEOUT.

Clock error it leaves: the guest's clock is set to a host time read before the
request travelled, so the guest lags the host by that one-way trip (the hello is
done by then), at most a sync's round trip.  Measured by tests/test_vm_guest_sync.py
(`nice -n 10 pytest tests/test_vm_guest_sync.py -s`; TCG guest, 2 shared cores under
load, 2026-11-30): a sync's round trip 26 ms; syncs right after one another stepped
the clock by -0.5 ms (one run), +14.7 and -8.6 ms (another), i.e. the error is a few
tens of ms, far inside the 1 s required; `adjtimex` in the guest read a time within
-0.041..+0.044 s of the host's (the exec's own bracket was 0.086 s).
"""

import os

import trio

from .agent_client import AgentError, SyncResult, agent_error_in, open_agent
from .errors import KindlingError
from .instance import Instance

SYNC_ENTROPY = 64          # bytes (512 bits; the kernel's input pool holds 256)
SYNC_TIMEOUT = 30.0        # seconds for connect + hello (with reconnects) + sync


async def after_restore(instance: Instance, *, timeout: float = SYNC_TIMEOUT) -> SyncResult:
    """Set the guest's clock to the host's and give its RNG fresh entropy (through the agent).

    Raises KindlingError naming what failed: no agent socket, no hello, the agent's refusal
    (an agent without `sync` answers `unsupported`), or the time bound.
    """
    socket = instance.agent_socket
    what = f"after the restore of instance {instance.id}: syncing the guest's clock and RNG"
    if not socket.exists():
        raise KindlingError(f"{what}: the instance has no agent socket ({socket})",
                            hint="restoring needs the agent on virtio-serial (not --agent none or vsock)")
    try:
        with trio.fail_after(timeout):
            async with open_agent(socket, timeout=timeout) as client:
                return await client.sync(os.urandom(SYNC_ENTROPY))
    except trio.TooSlowError:
        raise KindlingError(f"{what}: no answer within {timeout:g} s") from None
    except (AgentError, BaseExceptionGroup) as caught:   # connect, hello, or the agent's refusal
        failure = agent_error_in(caught)
        if failure is None:
            raise
    raise KindlingError(f"{what} failed: {failure}", hint=failure.hint) from None
