"""exec over a unix socket, with a real agent process and real commands."""

import os
import signal
import time

import pytest
import trio

from agentproc import agent, process_gone, vm_rss_kib  # noqa: F401  (agent: fixture)
from host_shim.agent_client import RemoteError, open_agent

MiB = 1 << 20


async def test_stdout_100_mib_streams_with_flat_rss(agent):
    """100 MiB of stdout: RSS of the agent and of this client stays flat (credit flow control)."""
    total = 100 * MiB
    samples = {"agent": [], "client": []}

    async def sample(stop):
        while not stop.is_set():
            samples["agent"].append(agent.rss_kib())
            samples["client"].append(vm_rss_kib())
            await trio.sleep(0.02)

    with trio.fail_after(120):
        async with open_agent(agent.socket, timeout=10) as a:
            # warm-up: allocator arenas, buffers and the thread cache reach their working size
            warm = 0

            async def count_warm(data):
                nonlocal warm
                warm += len(data)

            await a.exec(["head", "-c", str(8 * MiB), "/dev/zero"], stdout=count_warm)
            base = {"agent": agent.rss_kib(), "client": vm_rss_kib()}
            got = 0

            async def count(data):
                nonlocal got
                got += len(data)

            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sample, stop)
                t0 = time.monotonic()
                result = await a.exec(["head", "-c", str(total), "/dev/zero"], stdout=count)
                elapsed = time.monotonic() - t0
                stop.set()
    assert result.code == 0 and got == total and warm == 8 * MiB
    growth = {k: max(v) - base[k] for k, v in samples.items()}
    print(f"\n100 MiB stdout over the unix socket: {elapsed:.2f} s = {total / MiB / elapsed:.0f} MiB/s;"
          f" RSS growth agent {growth['agent']} KiB, client {growth['client']} KiB"
          f" (baseline {base['agent']} / {base['client']} KiB, {len(samples['agent'])} samples)")
    assert len(samples["agent"]) >= 5
    assert growth["agent"] < 16 * 1024, growth
    assert growth["client"] < 16 * 1024, growth


async def test_twenty_concurrent_execs(agent):
    with trio.fail_after(60):
        async with open_agent(agent.socket, timeout=10) as a:
            results = {}

            async def one(i):
                results[i] = await a.exec(["sh", "-c", f"sleep 1; echo out{i}; echo err{i} >&2; exit {i}"])

            t0 = time.monotonic()
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(one, i)
            elapsed = time.monotonic() - t0
    assert sorted(results) == list(range(20))
    for i, r in results.items():
        assert (r.code, r.stdout, r.stderr) == (i, f"out{i}\n".encode(), f"err{i}\n".encode())
    assert elapsed < 10, f"20 one-second commands took {elapsed:.1f} s: not concurrent"


async def test_timeout_kills_the_whole_process_group(agent):
    with trio.fail_after(30):
        async with open_agent(agent.socket, timeout=10) as a:
            t0 = time.monotonic()
            r = await a.exec(["sh", "-c", "sleep 300 & echo $!; sleep 300"], timeout=1.0)
            elapsed = time.monotonic() - t0
    assert r.timed_out and r.code == 124
    assert 0.9 < elapsed < 10
    grandchild = int(r.stdout.split()[0])
    deadline = time.monotonic() + 5
    while not process_gone(grandchild):
        assert time.monotonic() < deadline, f"grandchild {grandchild} still running after the timeout"
        await trio.sleep(0.02)


async def test_tty_sees_resize(agent):
    with trio.fail_after(30):
        async with open_agent(agent.socket, timeout=10) as a:
            async with a.open_exec(["sh", "-c", "stty size; read x; stty size"], tty=True, stdin=True,
                                   rows=24, cols=80) as proc:
                out = b""
                while b"24 80" not in out:
                    out += await proc.receive()
                await proc.resize(50, 132)
                await proc.send_stdin(b"go\n")
                while b"50 132" not in out:
                    chunk = await proc.receive()
                    assert chunk, f"output ended without the new size: {out!r}"
                    out += chunk
                result = await proc.wait()
    assert result.code == 0


async def test_tty_merges_stderr_and_is_a_terminal(agent):
    with trio.fail_after(30):
        async with open_agent(agent.socket, timeout=10) as a:
            r = await a.exec(["sh", "-c", "test -t 0 && test -t 1 && echo tty; echo e >&2"], tty=True)
    assert r.code == 0 and r.stdout.replace(b"\r\n", b"\n") == b"tty\ne\n" and r.stderr == b""


async def test_stdin_eof_is_delivered(agent):
    payload = os.urandom(5 * MiB)
    with trio.fail_after(60):
        async with open_agent(agent.socket, timeout=10) as a:
            r = await a.exec(["cat"], stdin=payload)
            assert r.code == 0 and r.stdout == payload

            async def chunks():
                for i in range(50):
                    yield f"line {i}\n".encode()

            r = await a.exec(["wc", "-l"], stdin=chunks())
            assert r.stdout.strip() == b"50"
            r = await a.exec(["cat"], stdin=b"")
            assert r.code == 0 and r.stdout == b""
            # TTY mode: EOF is ^D; cat exits on it
            r = await a.exec(["cat"], stdin=b"typed", tty=True)
            assert r.code == 0 and b"typed" in r.stdout


async def test_exit_codes_and_signals(agent, tmp_path):
    not_exec = agent.dir / "not-executable"
    not_exec.write_text("#!/bin/sh\n")
    with trio.fail_after(30):
        async with open_agent(agent.socket, timeout=10) as a:
            r = await a.exec(["sh", "-c", "kill -TERM $$"])
            assert (r.code, r.signal) == (128 + 15, 15)
            r = await a.exec(["no-such-command-xyz"])
            assert r.code == 127 and "not found" in r.error
            r = await a.exec([str(not_exec)])
            assert r.code == 126
            async with a.open_exec(["sleep", "30"]) as proc:
                while proc.pid is None:
                    typ, body = await proc._session.next_control()
                    proc.pid = body["pid"]
                await proc.signal(signal.SIGINT)
                r = await proc.wait()
            assert (r.code, r.signal) == (130, 2)


async def test_env_cwd_user(agent):
    with trio.fail_after(30):
        async with open_agent(agent.socket, timeout=10) as a:
            r = await a.exec(["sh", "-c", 'echo "$FOO"; pwd'], env={"FOO": "bar baz"}, cwd="/usr")
            assert r.stdout == b"bar baz\n/usr\n"
            assert b"KINDLING_READY" not in (await a.exec(["env"])).stdout
            r = await a.exec(["sh", "-c", "id -u; id -g; echo $HOME"], user="nobody")
            assert r.stdout.split()[:2] == [b"65534", b"65534"] and r.stdout.split()[2] == b"/nonexistent"
            r = await a.exec(["id", "-u"], user="4321:4321")
            assert r.stdout == b"4321\n"
            with pytest.raises(RemoteError) as e:
                await a.exec(["true"], user="no-such-user-xyz")
            assert e.value.field == "user"
            with pytest.raises(RemoteError) as e:
                await a.exec(["true"], cwd="/no/such/dir")
            assert e.value.code == "not_found" and e.value.field == "cwd"


async def test_leaving_early_kills_the_command(agent):
    with trio.fail_after(30):
        async with open_agent(agent.socket, timeout=10) as a:
            async with a.open_exec(["sh", "-c", "echo $$; sleep 300"]) as proc:
                pid = int((await proc.receive()).strip())
            deadline = time.monotonic() + 5
            while not process_gone(pid):
                assert time.monotonic() < deadline, "the abandoned command is still running"
                await trio.sleep(0.02)
            assert (await a.exec(["true"])).code == 0     # the connection is still fine


async def test_exec_round_trip(agent):
    with trio.fail_after(60):
        async with open_agent(agent.socket, timeout=10) as a:
            times = []
            for _ in range(30):
                t0 = time.perf_counter()
                r = await a.exec(["true"])
                times.append(time.perf_counter() - t0)
                assert r.code == 0
    times.sort()
    print(f"\nexec round trip of `true` over the unix socket: median {times[len(times) // 2] * 1000:.1f} ms")
