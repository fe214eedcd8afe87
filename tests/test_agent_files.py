"""copy_to / copy_from / stat over a unix socket with a real agent, and hostile trees
from a fake guest (the guest is untrusted)."""

import hashlib
import os
import stat
import time

import pytest
import trio
import trio.testing

from agent import wire
from agentproc import agent  # noqa: F401  (fixture)
from host_shim.agent_client import AgentProtocolError, RemoteError, open_agent, open_agent_stream

MiB = 1 << 20


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def test_64_mib_file_round_trip(agent, tmp_path):
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(MiB))
    remote = agent.dir / "in-guest.bin"
    back = tmp_path / "back.bin"
    with trio.fail_after(120):
        async with open_agent(agent.socket, timeout=10) as a:
            t0 = time.monotonic()
            res = await a.copy_to(src, remote)
            t_in = time.monotonic() - t0
            t0 = time.monotonic()
            res2 = await a.copy_from(remote, back)
            t_out = time.monotonic() - t0
    assert (res.entries, res.bytes) == (1, 64 * MiB) and (res2.entries, res2.bytes) == (1, 64 * MiB)
    assert sha256(src) == sha256(remote) == sha256(back)
    print(f"\n64 MiB over the unix socket: to guest {64 / t_in:.0f} MiB/s, from guest {64 / t_out:.0f} MiB/s")


def make_tree(root):
    root.mkdir()
    (root / "sub").mkdir(mode=0o750)
    (root / "sub" / "data.txt").write_text("hello\n")
    os.chmod(root / "sub" / "data.txt", 0o640)
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o755)
    (root / "suid").write_text("x")
    os.chmod(root / "suid", 0o4755)
    (root / "empty").mkdir(mode=0o700)
    os.symlink("sub/data.txt", root / "link")
    os.symlink("/etc/passwd", root / "abs-link")
    os.utime(root / "sub" / "data.txt", ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    os.utime(root / "sub", ns=(1_600_000_000_000_000_000, 1_500_000_000_000_000_000))
    os.mkfifo(root / "fifo")      # not copied: counted as skipped


async def test_tree_with_modes_and_symlinks(agent, tmp_path):
    src = tmp_path / "tree"
    make_tree(src)
    remote = agent.dir / "tree-in-guest"
    back = tmp_path / "back"
    with trio.fail_after(60):
        async with open_agent(agent.socket, timeout=10) as a:
            res = await a.copy_to(src, remote)
            assert res.skipped == 1 and res.entries == 8
            info = await a.stat(remote / "link")
            assert (info.type, info.target) == ("symlink", "sub/data.txt")
            info = await a.stat(remote / "sub")
            assert (info.type, info.mode, info.mtime_ns) == ("dir", 0o750, 1_500_000_000_000_000_000)
            info = await a.stat(remote / "suid")
            assert info.mode == 0o4755           # the host is trusted: the guest keeps setuid
            res = await a.copy_from(remote, back)
    for rel in ("sub", "sub/data.txt", "run.sh", "empty", "link", "abs-link"):
        s, b = os.lstat(src / rel), os.lstat(back / rel)
        assert stat.S_IFMT(s.st_mode) == stat.S_IFMT(b.st_mode), rel
        assert stat.S_IMODE(s.st_mode) == stat.S_IMODE(b.st_mode) or stat.S_ISLNK(s.st_mode), rel
        assert s.st_mtime_ns == b.st_mtime_ns, rel
    assert os.readlink(back / "link") == "sub/data.txt"
    assert os.readlink(back / "abs-link") == "/etc/passwd"
    assert (back / "sub" / "data.txt").read_text() == "hello\n"
    assert stat.S_IMODE(os.stat(back / "suid").st_mode) == 0o755     # the guest is not: setuid dropped
    assert not (back / "fifo").exists()


async def test_files_are_replaced_atomically_and_symlinks_not_followed(agent, tmp_path):
    outside = agent.dir / "outside.txt"
    outside.write_text("keep me")
    dest = agent.dir / "dest.txt"
    os.symlink(outside, dest)           # the destination is a symlink to another file
    new = tmp_path / "new.txt"
    new.write_text("new content")
    with trio.fail_after(30):
        async with open_agent(agent.socket, timeout=10) as a:
            await a.copy_to(new, dest)
            assert outside.read_text() == "keep me"          # not written through
            assert not dest.is_symlink() and dest.read_text() == "new content"
            ino = dest.stat().st_ino
            new.write_text("newer")
            await a.copy_to(new, dest)
            assert dest.read_text() == "newer" and dest.stat().st_ino != ino   # renamed over
            assert not [p for p in agent.dir.iterdir() if p.name.startswith(".kindling-")]
            with pytest.raises(RemoteError) as e:
                await a.copy_to(new, agent.dir / "no" / "such" / "dir" / "f")
            assert e.value.code == "not_found"


async def test_stat(agent):
    (agent.dir / "st").mkdir()
    (agent.dir / "st" / "f").write_bytes(b"12345")
    os.chmod(agent.dir / "st" / "f", 0o600)
    os.symlink("f", agent.dir / "st" / "l")
    with trio.fail_after(30):
        async with open_agent(agent.socket, timeout=10) as a:
            f = await a.stat(agent.dir / "st" / "f")
            assert (f.exists, f.type, f.mode, f.size) == (True, "file", 0o600, 5)
            link = await a.stat(agent.dir / "st" / "l")
            assert (link.type, link.target) == ("symlink", "f")
            followed = await a.stat(agent.dir / "st" / "l", follow=True)
            assert (followed.type, followed.size) == ("file", 5)
            d = await a.stat(agent.dir / "st")
            assert d.type == "dir"
            assert not (await a.stat(agent.dir / "st" / "missing")).exists
            assert (await a.stat("/dev/null")).type == "char"


# --- a hostile guest ----------------------------------------------------------------

async def hostile_agent(stream, entries):
    """Answers the hello, then answers any `get` with the given (entry, data) list."""
    try:
        await _hostile_agent(stream, entries)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass        # the client hung up on it: that is the point


async def _hostile_agent(stream, entries):
    decoder = wire.Decoder()
    while True:
        msg = decoder.next()
        if msg is None:
            data = await stream.receive_some(65536)
            if not data:
                return
            decoder.feed(data)
            continue
        if msg is wire.RESET:
            continue
        if msg[0] == "hello":
            await stream.send_all(wire.MAGIC + wire.encode(wire.agent_hello(msg[2]["nonce"])))
        elif msg[0] == "open":
            sid = msg[1]
            for entry, data in entries:
                await stream.send_all(wire.encode(["entry", sid, "out", entry]))
                if data:
                    await stream.send_all(wire.encode(["data", sid, "out", data]))
            await stream.send_all(wire.encode(["eof", sid, "out"]))
            await stream.send_all(wire.encode(["result", sid, {"entries": len(entries), "bytes": 0}]))


ROOT = {"path": "", "type": "dir", "mode": 0o755}


def f(path, data=b"evil", **kw):
    return ({"path": path, "type": "file", "mode": 0o644, "size": len(data), **kw}, data)


HOSTILE = {
    "dotdot": ([(ROOT, None), f("../escaped")], "'..'"),
    "absolute": ([(ROOT, None), f("/tmp/escaped-abs")], "absolute"),
    "nested-dotdot": ([(ROOT, None), ({"path": "d", "type": "dir"}, None), f("d/../../escaped")], "'..'"),
    "through-symlink": ([(ROOT, None), ({"path": "link", "type": "symlink", "target": "{outside}"}, None),
                         f("link/escaped")], "directory was not sent"),
    "symlink-as-dir": ([(ROOT, None), ({"path": "link", "type": "symlink", "target": "{outside}"}, None),
                        ({"path": "link", "type": "dir"}, None), f("link/escaped")], "not a directory"),
    "more-data-than-size": ([(ROOT, None), ({"path": "x", "type": "file", "size": 2}, None),
                             ({"path": "y", "type": "dir"}, None)], "before the end of file"),
    "parent-missing": ([(ROOT, None), f("a/b/escaped")], "directory was not sent"),
    "second-root": ([(ROOT, None), (ROOT, None)], "second root"),
    "device": ([(ROOT, None), ({"path": "dev", "type": "char"}, None)], "type 'char'"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_tree_cannot_escape(case, tmp_path):
    entries, match = HOSTILE[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    entries = [({k: (v.format(outside=outside) if isinstance(v, str) else v) for k, v in e.items()}, d)
               for e, d in entries]
    dest = tmp_path / "dest"
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hostile_agent, server, entries)
            async with open_agent_stream(client, timeout=5) as a:
                with pytest.raises(AgentProtocolError, match=match):
                    await a.copy_from("/whatever", dest)
            nursery.cancel_scope.cancel()
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escaped").exists() and not os.path.exists("/tmp/escaped-abs")
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".kindling-")]
    assert leftovers == []


async def test_hostile_guest_symlink_is_replaced_not_followed(tmp_path):
    """A file entry named like an earlier symlink replaces the link; its target is untouched."""
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    entries = [(ROOT, None), ({"path": "link", "type": "symlink", "target": str(outside)}, None),
               f("link", b"overwrite?", mode=0o6755)]
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hostile_agent, server, entries)
            async with open_agent_stream(client, timeout=5) as a:
                await a.copy_from("/whatever", tmp_path / "dest")
            nursery.cancel_scope.cancel()
    assert outside.read_text() == "precious"
    assert (tmp_path / "dest" / "link").read_bytes() == b"overwrite?"
    assert stat.S_IMODE(os.stat(tmp_path / "dest" / "link").st_mode) == 0o755


async def test_copy_from_limits(tmp_path):
    entries = [(ROOT, None), f("a", b"x" * 1000), f("b", b"y" * 1000)]
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hostile_agent, server, entries)
            async with open_agent_stream(client, timeout=5) as a:
                with pytest.raises(AgentProtocolError, match="larger than 1500 bytes"):
                    await a.copy_from("/whatever", tmp_path / "d1", max_bytes=1500)
                with pytest.raises(AgentProtocolError, match="more than 2 entries"):
                    await a.copy_from("/whatever", tmp_path / "d2", max_entries=2)
            nursery.cancel_scope.cancel()
