"""Host tests for image_build: the cpio writer, the initrd, the rootfs, disks, errors.

One session-scoped build (Debian's cloud kernel, busybox rootfs, default
compression) is shared by most tests.  The cache is $KINDLING_CACHE or
~/.cache/kindling, so a second run is fast; the reproducibility test forces a
real rebuild.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from image_build import cache, cpio, disks, pyruntime
from image_build.build import Artifacts, BuildOptions, build_all
from image_build.cli import cli
from image_build.errors import BuildError
from image_build.kmod import WANTED_MODULES
from image_build.run import run
from tests.newc import initrd_entries as read_initrd, read_newc, split_initrd

IS_ROOT = os.geteuid() == 0
@pytest.fixture
def _root():
    """Fail loudly (never skip): these tests chroot and keep file owners; CI runs as root."""
    assert IS_ROOT, "this test needs root (chroot, file owners): run the suite as root"


needs_root = pytest.mark.usefixtures("_root")


# --------------------------------------------------------------------------
# Extracting what tests/newc.py read


def extract_entries(entries: list[dict], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for e in entries:
        p = dest / e["name"]
        mode = e["mode"]
        if stat.S_ISDIR(mode):
            p.mkdir(parents=True, exist_ok=True)
            os.chmod(p, stat.S_IMODE(mode))
        elif stat.S_ISLNK(mode):
            os.symlink(e["body"].decode(), p)
        elif stat.S_ISREG(mode):
            p.write_bytes(e["body"])
            os.chmod(p, stat.S_IMODE(mode))
        elif stat.S_ISCHR(mode):
            os.mknod(p, mode, os.makedev(*e["rdev"]))


# --------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return cache.default_cache_dir()


@pytest.fixture(scope="session")
def built(tmp_path_factory, cache_dir) -> Artifacts:
    out = tmp_path_factory.mktemp("build-a")
    return build_all(BuildOptions(out_dir=out, cache_dir=cache_dir))


@pytest.fixture(scope="session")
def initrd_entries(built) -> dict[str, dict]:
    return read_initrd(built.initrd)


@pytest.fixture(scope="session")
def initrd_root(built, initrd_entries, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("initrd-root")
    extract_entries(list(initrd_entries.values()), root)
    return root


# --------------------------------------------------------------------------
# cpio writer


def _sample_entries(tmp_path: Path) -> list[cpio.Entry]:
    src = tmp_path / "payload.bin"
    src.write_bytes(b"x" * 4097)
    return [
        cpio.directory("usr"),
        cpio.directory("usr/bin"),
        cpio.file("usr/bin/tool", src, 0o755),
        cpio.data("etc/hostname", b"kindling\n"),
        cpio.directory("etc"),
        cpio.symlink("bin", "usr/bin"),
        cpio.chardev("dev/console", 5, 1, 0o600),
        cpio.directory("dev"),
        cpio.data("empty", b""),
        cpio.directory("tmp", 0o1777),
    ]


def test_cpio_roundtrip(tmp_path):
    buf = io.BytesIO()
    n = cpio.write(_sample_entries(tmp_path), buf)
    data = buf.getvalue()
    assert n == len(data)
    entries = read_newc(data)
    names = [e["name"] for e in entries]
    assert names == sorted(names, key=lambda s: s.encode())
    assert names == ["bin", "dev", "dev/console", "empty", "etc", "etc/hostname", "tmp",
                     "usr", "usr/bin", "usr/bin/tool"]
    assert [e["ino"] for e in entries] == list(range(1, len(entries) + 1))
    for e in entries:
        assert (e["uid"], e["gid"], e["mtime"], e["nlink"], e["check"]) == (0, 0, 0, 1, 0)
    by = {e["name"]: e for e in entries}
    assert stat.S_ISLNK(by["bin"]["mode"]) and by["bin"]["body"] == b"usr/bin"
    assert stat.S_ISCHR(by["dev/console"]["mode"]) and by["dev/console"]["rdev"] == (5, 1)
    assert stat.S_IMODE(by["dev/console"]["mode"]) == 0o600
    assert stat.S_ISREG(by["usr/bin/tool"]["mode"]) and stat.S_IMODE(by["usr/bin/tool"]["mode"]) == 0o755
    assert by["usr/bin/tool"]["body"] == b"x" * 4097
    assert by["etc/hostname"]["body"] == b"kindling\n"
    assert by["empty"]["size"] == 0
    assert stat.S_ISDIR(by["tmp"]["mode"]) and stat.S_IMODE(by["tmp"]["mode"]) == 0o1777
    assert len(data) % 4 == 0


def test_cpio_deterministic(tmp_path):
    entries = _sample_entries(tmp_path)
    a, b = io.BytesIO(), io.BytesIO()
    cpio.write(entries, a)
    shuffled = list(entries)
    random.Random(7).shuffle(shuffled)
    cpio.write(shuffled, b)
    assert a.getvalue() == b.getvalue()


def test_cpio_from_tree(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_text("hi")
    os.symlink("a/b/f", root / "link")
    buf = io.BytesIO()
    cpio.write(cpio.entries_from_tree(root), buf)
    by = {e["name"]: e for e in read_newc(buf.getvalue())}
    assert set(by) == {"a", "a/b", "a/b/f", "link"}
    assert by["a/b/f"]["body"] == b"hi" and by["link"]["body"] == b"a/b/f"


@pytest.mark.parametrize("name", ["", "/", "a/../b", "./x", "a//b"])
def test_cpio_rejects_bad_names(name):
    with pytest.raises(ValueError):
        cpio.data(name, b"")


# --------------------------------------------------------------------------
# the initrd


def test_initrd_reproducible(built, cache_dir, tmp_path):
    again = build_all(BuildOptions(out_dir=tmp_path / "b", cache_dir=cache_dir, force=True))
    assert again.info["initrd"]["cached"] is False
    assert again.initrd.read_bytes() == built.initrd.read_bytes()
    assert again.rootfs.read_bytes() == built.rootfs.read_bytes()  # busybox erofs


def test_second_build_is_cached(built, cache_dir, tmp_path):
    again = build_all(BuildOptions(out_dir=tmp_path / "c", cache_dir=cache_dir))
    assert again.info["initrd"]["cached"] is True
    assert again.info["rootfs"]["cached"] is True
    assert again.initrd.read_bytes() == built.initrd.read_bytes()
    assert again.kernel.read_bytes() == built.kernel.read_bytes()


def test_given_kernel_and_modules(built, cache_dir, tmp_path):
    """--kernel/--modules with a depmod'ed tree used in place gives the same initrd."""
    rel = built.kernel_release
    base = tmp_path / "kbase"
    shutil.copytree(built.info["modules_dir"], base / "lib" / "modules" / rel, symlinks=True)
    subprocess.run(["depmod", "-b", base, rel], check=True, timeout=300)
    art = build_all(BuildOptions(out_dir=tmp_path / "out", kernel=built.kernel,
                                 modules=base / "lib" / "modules" / rel, cache_dir=cache_dir))
    assert art.kernel_release == rel
    assert art.info["initrd"]["cached"] is False
    assert art.kernel.read_bytes() == built.kernel.read_bytes()
    # no kernel headers for a given kernel: the initrd is the default one without its headers segment
    assert art.info["headers"] is None
    plain, main = split_initrd(built.initrd.read_bytes())
    assert len(plain) == 1 and art.initrd.read_bytes() == main


def test_a_changed_closure_module_or_modules_dep_rebuilds_the_initrd(built, cache_dir, tmp_path):
    """The cache key names the module tree by its modules.dep (no walk of ~4,000 files per
    create); the closure's .ko files are checked as host files, so touching one -- or
    modules.dep -- still rebuilds."""
    rel = built.kernel_release
    tree = tmp_path / "kbase" / "lib" / "modules" / rel
    shutil.copytree(built.info["modules_dir"], tree, symlinks=True, copy_function=os.link)
    blk = next(tree.rglob("virtio_blk.ko*"))
    data = blk.read_bytes()     # its own copy: utime must not touch the cache's file
    blk.unlink()
    blk.write_bytes(data)
    subprocess.run(["depmod", "-b", tmp_path / "kbase", rel], check=True, timeout=300)

    def build():
        return build_all(BuildOptions(out_dir=tmp_path / "out", kernel=built.kernel, modules=tree,
                                      cache_dir=cache_dir)).info["initrd"]["cached"]
    build()
    assert build() is True
    os.utime(blk, ns=(1, 1))
    assert build() is False
    assert build() is True
    later = (tree / "modules.dep").stat().st_mtime_ns + 10**9    # (1, 1) would be a key of the
    os.utime(tree / "modules.dep", ns=(later, later))            # shared cache from a past run
    assert build() is False


def test_initrd_layout(built, initrd_entries):
    e = initrd_entries
    for link, target in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")]:
        assert stat.S_ISLNK(e[link]["mode"]) and e[link]["body"].decode() == target
    init = e["init"]
    assert stat.S_ISREG(init["mode"]) and stat.S_IMODE(init["mode"]) == 0o755
    assert init["body"].startswith(b"#!/usr/bin/python3.11")
    for name, rdev in [("dev/console", (5, 1)), ("dev/null", (1, 3)), ("dev/urandom", (1, 9)),
                       ("dev/random", (1, 8)), ("dev/tty", (5, 0))]:
        assert stat.S_ISCHR(e[name]["mode"]) and e[name]["rdev"] == rdev, name
    for d in ["proc", "sys", "dev", "run", "tmp", "newroot", "mnt", "etc"]:
        assert stat.S_ISDIR(e[d]["mode"]), d
    assert stat.S_IMODE(e["tmp"]["mode"]) == 0o1777
    assert all(x["uid"] == 0 and x["gid"] == 0 and x["mtime"] == 0 for x in e.values())
    info = json.loads(e["usr/lib/kindling/build.json"]["body"])
    assert info["kernel_release"] == built.kernel_release
    assert info["python_version"].startswith("3.11.")
    assert info["deps"] == pyruntime.PINS
    assert info["modules"] == e["usr/lib/kindling/modules.list"]["body"].decode().split()


def test_initrd_python_runtime(initrd_entries):
    names = set(initrd_entries)
    assert "usr/bin/python3.11" in names
    assert "usr/lib/python3.11/os.pyc" in names
    assert "usr/lib/python3.11/encodings/utf_8.pyc" in names
    assert "usr/lib/python3.11/lib-dynload" in names
    for pkg in ["trio", "pyudev", "pyroute2", "msgpack", "initsys", "sniffio", "outcome", "attr", "idna",
                "sortedcontainers"]:
        assert f"usr/lib/kindling/{pkg}/__init__.pyc" in names, pkg
    lib = initrd_entries["usr/lib/x86_64-linux-gnu/libudev.so.1"]
    if stat.S_ISLNK(lib["mode"]):
        assert "usr/lib/x86_64-linux-gnu/" + lib["body"].decode() in names
    ld = initrd_entries["usr/lib64/ld-linux-x86-64.so.2"]
    assert stat.S_ISLNK(ld["mode"]) or stat.S_ISREG(ld["mode"])
    assert "usr/lib/x86_64-linux-gnu/libc.so.6" in names
    # sourceless, hash-based bytecode only
    assert not [n for n in names if n.endswith(".py")]
    assert not [n for n in names if "__pycache__" in n]
    for name in ["usr/lib/python3.11/os.pyc", "usr/lib/kindling/trio/__init__.pyc"]:
        flags = int.from_bytes(initrd_entries[name]["body"][4:8], "little")
        assert flags == 0b01, f"{name}: expected an unchecked hash-based pyc, flags={flags}"
    # nothing from a host site-packages or venv
    for n in names:
        assert "site-packages" not in n and "dist-packages" not in n and ".venv" not in n, n
    assert not [n for n in names if "/_tests/" in n]
    # only the traced stdlib, not all of it
    assert "usr/lib/python3.11/tkinter/__init__.pyc" not in names
    assert "usr/lib/python3.11/lib2to3/__init__.pyc" not in names


def _independent_closure(modules_dir: Path, release: str, tmp: Path,
                         wanted=tuple(WANTED_MODULES)) -> list[str]:
    """modprobe --show-depends on our own depmod'ed copy of the tree."""
    base = tmp / "kbase"
    if not base.exists():
        shutil.copytree(modules_dir, base / "lib" / "modules" / release, symlinks=True)
        subprocess.run(["depmod", "-b", base, release], check=True, timeout=300)
    tree = base / "lib" / "modules" / release
    rels = []
    for name in wanted:
        out = subprocess.run(["modprobe", "--show-depends", "-d", base, "-S", release, name],
                             check=True, capture_output=True, text=True, timeout=60).stdout
        for line in out.splitlines():
            if line.startswith("insmod "):
                rel = Path(line.split()[1]).relative_to(tree).as_posix()
                for suffix in (".ko.xz", ".ko.zst", ".ko.gz"):
                    if rel.endswith(suffix):
                        rel = rel[: -len(suffix)] + ".ko"
                rels.append(rel)
    return rels


def test_initrd_modules_are_the_closure(built, initrd_entries, tmp_path):
    rel = built.kernel_release
    prefix = f"usr/lib/modules/{rel}/"
    plain = {n[len(prefix):] for n in initrd_entries if n.endswith(".ko")}
    packed = {n[len(prefix):-len(".xz")] for n in initrd_entries if n.endswith(".ko.xz")}
    assert all(n.startswith(prefix) for n in initrd_entries if n.endswith((".ko", ".ko.xz")))
    assert not [n for n in initrd_entries if n.endswith((".ko.zst", ".ko.gz"))]
    expected = _independent_closure(Path(built.info["modules_dir"]), rel, tmp_path)
    # the NFS client (nfsv4 and its closure) is there too, xz-packed, loaded only for an nfs volume
    nfs = set(_independent_closure(Path(built.info["modules_dir"]), rel, tmp_path,
                                   ("nfsv4",))) - set(expected)
    assert {"kernel/fs/nfs/nfsv4.ko", "kernel/net/sunrpc/sunrpc.ko", "kernel/fs/lockd/lockd.ko"} <= nfs
    assert plain == set(expected)
    assert packed == nfs
    listed = initrd_entries["usr/lib/kindling/modules.list"]["body"].decode().split()
    assert sorted(listed) == sorted("/" + prefix + r for r in set(expected))
    assert len(listed) == len(set(listed))
    on_demand = initrd_entries["usr/lib/kindling/modules.nfs"]["body"].decode().split()
    assert sorted(on_demand) == sorted("/" + prefix + r + ".xz" for r in nfs)
    assert on_demand[-1].endswith("/nfsv4.ko.xz")       # dependencies first
    for name in ["virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "vmw_vsock_virtio_transport",
                 "overlay", "erofs"]:
        assert any(Path(p).name == name + ".ko" for p in listed), name
    soft = initrd_entries["usr/lib/kindling/modules.softdep"]["body"].decode().split()
    assert set(soft) <= set(listed)


def test_modules_list_order(initrd_root, initrd_entries):
    listed = initrd_entries["usr/lib/kindling/modules.list"]["body"].decode().split()
    position = {}
    for i, path in enumerate(listed):
        out = subprocess.run(["modinfo", "-F", "depends", str(initrd_root / path.lstrip("/"))],
                             check=True, capture_output=True, text=True, timeout=30).stdout.strip()
        deps = [d.replace("-", "_") for d in out.split(",") if d]
        for d in deps:
            assert d in position, f"{path} depends on {d}, which is not loaded before it"
        position[Path(path).name[:-3].replace("-", "_")] = i


@needs_root
def test_runtime_works_in_chroot(initrd_root):
    code = """if True:
        import sys; sys.path.insert(0, '/usr/lib/kindling')
        import trio, pyudev, msgpack, ctypes
        from initsys import network; network.import_iproute()  # as the network helper does
        ctypes.CDLL('libudev.so.1')
        from msgpack import _cmsgpack  # the C extension (stripped) loads
        try:
            import sqlite3  # only pyroute2/__init__ (never imported in the guest) wants it
        except ImportError:
            pass
        else:
            raise AssertionError('sqlite3 is in the initrd')
        assert not any('site-packages' in p for p in sys.path), sys.path
        print('ok', sys.prefix)
    """
    out = subprocess.run(["chroot", str(initrd_root), "/usr/bin/python3.11", "-I", "-S", "-c", code],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok /usr"


@needs_root
def test_guest_modules_import_in_chroot(initrd_root):
    repo = Path(__file__).resolve().parent.parent
    mods = [m for m in pyruntime.guest_modules(repo)
            if (repo / m.split(".")[0]).exists() or not m.startswith(("initsys", "agent"))]
    code = ("import sys, importlib, json; sys.path.insert(0, '/usr/lib/kindling')\n"
            "for m in json.loads(sys.argv[1]):\n"
            "    name, _, func = m.partition(':')\n"  # `module:function`: call it (lazy imports)
            "    mod = importlib.import_module(name)\n"
            "    func and getattr(mod, func)()\n"
            "print('ok')")
    missing = [m for m in mods if m.startswith(("initsys.", "agent."))
               and not (repo / (m.partition(":")[0].replace(".", "/") + ".py")).exists()]
    mods = [m for m in mods if m not in missing]
    out = subprocess.run(["chroot", str(initrd_root), "/usr/bin/python3.11", "-I", "-S", "-c", code,
                          json.dumps(mods)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


# --------------------------------------------------------------------------
# rootfs


def _rootfs_tree(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hello").write_text("hello\n")
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(root / "usr" / "bin" / "tool", 0o755)
    os.symlink("usr/bin", root / "bin")
    (root / "home" / "app").mkdir(parents=True)
    (root / "home" / "app" / "data").write_text("owned\n")
    os.chown(root / "home" / "app" / "data", 1234, 4321)      # needs root: see the test


def _make_tar(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src, arcname=".")
    return dest


def _check_image(image: Path, fmt: str, tmp: Path) -> None:
    if fmt == "erofs":
        out = tmp / "fsck-out"
        run(["fsck.erofs", f"--extract={out}", image], timeout=120)
        assert (out / "etc" / "hello").read_text() == "hello\n"
        assert os.readlink(out / "bin") == "usr/bin"
        assert os.stat(out / "usr" / "bin" / "tool").st_mode & 0o777 == 0o755
        st = os.stat(out / "home" / "app" / "data")
        assert (st.st_uid, st.st_gid) == (1234, 4321)
    else:
        run(["e2fsck", "-fn", image], timeout=120)
        ls = run(["debugfs", "-R", "ls -l /", image], timeout=60).stdout
        for name in ["etc", "usr", "bin", "home"]:
            assert f" {name}" in ls, ls
        cat = run(["debugfs", "-R", "cat /etc/hello", image], timeout=60).stdout
        assert cat == "hello\n"
        st = run(["debugfs", "-R", "stat /home/app/data", image], timeout=60).stdout
        assert "User:  1234" in st and "Group:  4321" in st, st


@pytest.mark.parametrize("fmt", ["erofs", "ext4"])
@pytest.mark.parametrize("source", ["dir", "tar"])
@needs_root         # file owners are part of what is checked (they were skipped without root)
def test_rootfs_from_source(built, cache_dir, tmp_path, fmt, source):
    tree = tmp_path / "tree"
    _rootfs_tree(tree)
    src = tree if source == "dir" else _make_tar(tree, tmp_path / "rootfs.tar.gz")
    art = build_all(BuildOptions(out_dir=tmp_path / "out", rootfs=src, rootfs_format=fmt, cache_dir=cache_dir))
    assert art.rootfs == tmp_path / "out" / "rootfs.img"
    _check_image(art.rootfs, fmt, tmp_path)


def test_default_rootfs_is_busybox(built, tmp_path):
    out = tmp_path / "bb"
    run(["fsck.erofs", f"--extract={out}", built.rootfs], timeout=120)
    assert (out / "bin" / "busybox").is_file()
    assert os.readlink(out / "bin" / "sh") == "/bin/busybox"
    assert (out / "etc" / "passwd").read_text() == "root:x:0:0:root:/root:/bin/sh\n"
    assert (out / "etc" / "resolv.conf").read_text() == ""
    assert stat.S_IMODE(os.lstat(out / "tmp").st_mode) == 0o1777
    for d in ["proc", "sys", "dev", "run", "root", "mnt"]:
        assert (out / d).is_dir()


def _evil_tar(path: Path, member: str, kind=tarfile.REGTYPE, linkname: str = "") -> Path:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(member)
        info.type = kind
        info.linkname = linkname
        data = b"" if kind != tarfile.REGTYPE else b"evil\n"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_rootfs_tarball_with_dotdot_is_refused(cache_dir, tmp_path):
    bad = _evil_tar(tmp_path / "bad.tar", "../evil")
    with pytest.raises(BuildError, match=r"'\.\./evil'.*'\.\.'"):
        build_all(BuildOptions(out_dir=tmp_path / "out", rootfs=bad, cache_dir=cache_dir))
    assert not (tmp_path / "evil").exists()


def test_rootfs_tarball_absolute_and_symlink_escape_refused(tmp_path):
    from image_build.rootfs import extract_tarball

    with pytest.raises(BuildError, match="absolute"):
        extract_tarball(_evil_tar(tmp_path / "abs.tar", "/etc/evil"), tmp_path / "x1")
    esc = tmp_path / "esc.tar"
    outside = tmp_path / "outside"
    outside.mkdir()
    with tarfile.open(esc, "w") as tar:
        link = tarfile.TarInfo("link")
        link.type = tarfile.SYMTYPE
        link.linkname = str(outside)
        tar.addfile(link)
        f = tarfile.TarInfo("link/pwned")
        f.size = 1
        tar.addfile(f, io.BytesIO(b"x"))
    with pytest.raises(BuildError, match="through the symlink"):
        extract_tarball(esc, tmp_path / "x2")
    assert not (outside / "pwned").exists()


# --------------------------------------------------------------------------
# clear errors


def test_missing_rootfs_path(tmp_path):
    missing = tmp_path / "no-such-rootfs"
    with pytest.raises(BuildError, match=r"--rootfs .*no-such-rootfs: no such file or directory"):
        build_all(BuildOptions(out_dir=tmp_path / "out", rootfs=missing, cache_dir=tmp_path / "c"))


def test_kernel_without_modules(tmp_path):
    k = tmp_path / "vmlinuz"
    k.write_bytes(b"not really a kernel")
    with pytest.raises(BuildError, match="needs --modules"):
        build_all(BuildOptions(out_dir=tmp_path / "out", kernel=k, cache_dir=tmp_path / "c"))


def test_modules_without_kernel(tmp_path):
    with pytest.raises(BuildError, match="--modules was given without --kernel"):
        build_all(BuildOptions(out_dir=tmp_path / "out", modules=tmp_path, cache_dir=tmp_path / "c"))


def test_no_apt_and_no_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(BuildError, match=r"apt-get.*pass --kernel VMLINUZ --modules DIR"):
        build_all(BuildOptions(out_dir=tmp_path / "out", cache_dir=tmp_path / "c"))


def test_modules_dir_that_is_not_one(tmp_path):
    k = tmp_path / "vmlinuz"
    k.write_bytes(b"x")
    (tmp_path / "mods").mkdir()
    with pytest.raises(BuildError, match="does not look like a lib/modules/<release> directory"):
        build_all(BuildOptions(out_dir=tmp_path / "out", kernel=k, modules=tmp_path / "mods",
                               cache_dir=tmp_path / "c"))


def test_missing_kernel_file(tmp_path):
    with pytest.raises(BuildError, match="no such file"):
        build_all(BuildOptions(out_dir=tmp_path / "out", kernel=tmp_path / "nope",
                               modules=tmp_path, cache_dir=tmp_path / "c"))


def test_bad_options(tmp_path):
    with pytest.raises(BuildError, match="rootfs_format 'xfs'"):
        build_all(BuildOptions(out_dir=tmp_path, rootfs_format="xfs"))
    with pytest.raises(BuildError, match="compression 'xz'"):
        build_all(BuildOptions(out_dir=tmp_path, compression="xz"))


def test_run_errors(tmp_path):
    with pytest.raises(BuildError, match=r"mkfs.erofs-nope: not found\nthe command was: mkfs.erofs-nope --help"):
        run(["mkfs.erofs-nope", "--help"], timeout=5)
    with pytest.raises(BuildError, match=r"apt-get install zstd"):
        run([str(tmp_path / "zstd")], timeout=5)
    with pytest.raises(BuildError, match=r"exit code 3\nthe command was: sh -c 'echo oops >&2; exit 3'\n    oops"):
        run(["sh", "-c", "echo oops >&2; exit 3"], timeout=5)
    with pytest.raises(BuildError, match=r"killed by signal 9 \(SIGKILL\)"):
        run(["sh", "-c", "kill -9 $$"], timeout=5)
    with pytest.raises(BuildError, match=r"timed out after 0.5 s"):
        run(["sleep", "5"], timeout=0.5)
    assert run(["echo", "hi"], timeout=5).stdout == "hi\n"


def test_cli_errors_are_clear(tmp_path, capsys):
    rc = cli(["build", "--rootfs", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert rc == 1
    assert "no such file or directory" in capsys.readouterr().err
    rc = cli(["--kernel", str(tmp_path), "--out", str(tmp_path / "o")])
    assert rc == 1


def test_cli_build_prints_artifacts(built, cache_dir, tmp_path, capsys):
    rc = cli(["build", "--out", str(tmp_path / "o"), "--cache-dir", str(cache_dir)])
    assert rc == 0
    out = capsys.readouterr().out
    for name in ["kernel", "initrd.img", "rootfs.img"]:
        assert str(tmp_path / "o" / name) in out
    assert "MiB" in out


# --------------------------------------------------------------------------
# disks


def test_config_disk(tmp_path):
    cfg = {"entrypoint": ["/bin/sh"], "env": {"A": "ü"}, "network_enabled": False}
    img = disks.make_config_disk(cfg, tmp_path / "config.img")
    run(["e2fsck", "-fn", img], timeout=60)
    text = run(["debugfs", "-R", "cat /config.json", img], timeout=60).stdout
    assert json.loads(text) == cfg
    assert img.stat().st_size <= 2 << 20


def test_config_disk_raw_bytes(tmp_path):
    img = disks.make_config_disk(b"{not json", tmp_path / "raw.img")
    assert run(["debugfs", "-R", "cat /config.json", img], timeout=60).stdout == "{not json"
    with pytest.raises(BuildError, match="not JSON-serialisable"):
        disks.make_config_disk({"x": object()}, tmp_path / "bad.img")


@pytest.mark.parametrize("maker", [disks.make_overlay_disk, disks.make_volume])
def test_sparse_ext4_disks(tmp_path, maker):
    size = 512 << 20
    img = maker(tmp_path / "disk.img", size)
    st = img.stat()
    assert st.st_size == size
    assert st.st_blocks * 512 < size // 4, "not sparse"
    run(["e2fsck", "-fn", img], timeout=60)
    with pytest.raises(BuildError, match="too small"):
        maker(tmp_path / "tiny.img", 4096)
