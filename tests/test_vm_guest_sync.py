"""after_restore's sync in a real TCG guest: the clock comes back from 1970 to within 1 s of
the host's, and the kernel RNG takes the host's entropy (credited, reseeded).

No snapshot is taken here (the snapshot tests own that): the guest's clock is set wrong by
an exec (`date -s`), as a restore would leave it.  The guest's time is read with busybox `adjtimex`
(time.tv_sec / time.tv_usec): the default image's busybox `date` has no %N.
"""

import os
import re
import time

import pytest
import trio

from host_shim import guest_sync, metadata
from host_shim.agent_client import open_agent
from tests.vm import kindling, private_home

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def home():
    with private_home("kgs-") as path:
        kindling(path, "create", "--name", "gs", "--", "sleep", "3600")
        kindling(path, "wait", "gs", "--for", "running", "--timeout", "150", timeout=200)
        yield path
        kindling(path, "delete", "gs", check=False)


def guest_time(result) -> float:
    out = result.stdout.decode()
    sec = re.search(r"time\.tv_sec:\s+(\d+)", out)
    usec = re.search(r"time\.tv_usec:\s+(\d+)", out)
    assert sec and usec, out
    return int(sec.group(1)) + int(usec.group(1)) / 1e6


async def bracketed_guest_time(client):
    """(host before, guest time, host after) around one exec of adjtimex."""
    before = time.time()
    result = await client.exec(["adjtimex"])
    after = time.time()
    return before, guest_time(result), after


async def test_clock_and_entropy_after_sync(home):
    instance = metadata.resolve(home, "gs")[0]
    with trio.fail_after(120):
        async with open_agent(instance.agent_socket, timeout=30) as client:
            # not @0: Linux refuses a wall clock earlier than the time since boot (EINVAL)
            wrong = await client.exec(["date", "-s", "@1000000"])
            assert wrong.code == 0 and wrong.stderr == b"", wrong
            _, wrong, _ = await bracketed_guest_time(client)
            assert 1000000 <= wrong < 1003600, wrong        # the guest now lives in January 1970
            random_before = (await client.exec(["head", "-c", "32", "/dev/urandom"])).stdout
        sent_at = time.time()
        first = await guest_sync.after_restore(instance)
        second = await guest_sync.after_restore(instance)
        async with open_agent(instance.agent_socket, timeout=30) as client:
            before, guest, after = await bracketed_guest_time(client)
            # the clock error sync leaves is the request's one-way trip: at most its round trip
            t0 = time.monotonic()
            third = await client.sync(os.urandom(64))
            round_trip = time.monotonic() - t0
            random_after = (await client.exec(["head", "-c", "32", "/dev/urandom"])).stdout
    # the first sync stepped the clock forward by ~56 years (what the guest lost, give or take
    # the seconds between reading `wrong` and the sync); the second by almost nothing
    assert abs(first.clock_step_ns / 1e9 - (sent_at - wrong)) < 30, (first, sent_at, wrong)
    assert abs(second.clock_step_ns) < 1e9 and abs(third.clock_step_ns) < 1e9, (second, third)
    assert round_trip < 1
    for reply in (first, second):
        assert (reply.entropy_bytes, reply.entropy_bits, reply.reseeded) == (64, 512, True)
    assert before - 1 <= guest <= after + 1, (before, guest, after)
    print(f"\nguest clock after sync: {guest - after:+.3f} .. {guest - before:+.3f} s from the host's"
          f" (exec bracket {after - before:.3f} s); later syncs stepped {second.clock_step_ns / 1e6:+.1f}"
          f" and {third.clock_step_ns / 1e6:+.1f} ms; a sync's round trip (bounds the lag it leaves):"
          f" {round_trip * 1e3:.1f} ms")
    assert len(random_before) == len(random_after) == 32 and random_before != random_after
