"""The kernel-headers worker (initsys/headers.py), run as a real subprocess against a
temporary root with small real tarballs made here, and once with Debian's real one."""

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from initsys import headers, headers_launch, protocol

ROOT = Path(__file__).resolve().parent.parent
REL = "6.1.0-99-test-amd64"
OLD = "6.1.0-98-test-amd64"
BUILD = f"/usr/src/linux-headers-{REL}"


# --- tarballs ------------------------------------------------------------------------

def make_tarball(path: Path, members, compression="gz") -> Path:
    """members: (name, kind, payload) with kind file (bytes), dir, symlink (target),
    hardlink (target) or fifo."""
    with tarfile.open(path, f"w:{compression}") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            info.mode = 0o755 if kind in ("dir", "exec") else 0o644
            data = None
            if kind in ("file", "exec"):
                data = payload
                info.size = len(data)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, payload
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def debian_like(rel=REL, abi="6.1.0-99", kbuild="6.1"):
    """The layout of Debian's three packages, in miniature."""
    arch, common, kb = f"usr/src/linux-headers-{rel}", f"usr/src/linux-headers-{abi}-common", \
        f"usr/lib/linux-kbuild-{kbuild}"
    return [
        (arch, "dir", None),
        (f"{arch}/.config", "file", b"CONFIG_MODULES=y\n"),
        (f"{arch}/Makefile", "file", f"include /{common}/Makefile\n".encode()),
        (f"{arch}/scripts", "symlink", f"../../lib/linux-kbuild-{kbuild}/scripts"),
        (common, "dir", None),
        (f"{common}/Makefile", "file", b"# the common part\n"),
        (f"{common}/include/linux/module.h", "file", b"#define MODULE\n"),   # parent dirs not listed
        (f"{common}/scripts", "symlink", f"../../lib/linux-kbuild-{kbuild}/scripts"),
        (kb, "dir", None),
        (f"{kb}/scripts", "dir", None),
        (f"{kb}/scripts/basic", "dir", None),
        (f"{kb}/scripts/basic/fixdep", "exec", b"\x7fELF fixdep\n"),
    ]


def worker(root, tarball=None, release=REL, *extra, timeout=60):
    argv = [sys.executable, "-m", "initsys.headers", "--root", str(root), "--release", release, *extra]
    if tarball is not None:
        argv += ["--tarball", str(tarball)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def sentinels(stdout):
    """The sentinels on the worker's stdout, in order; every line must be one."""
    found = [protocol.find_sentinel(line) for line in stdout.splitlines()]
    assert all(f is not None and f[0] == 0 for f in found), stdout
    return [marker for _, marker in found]


def status(root):
    return (Path(root) / headers.STATUS_FILE).read_text()


def log_lines(root):
    return (Path(root) / headers.LOG_FILE).read_text().splitlines()


@pytest.fixture
def root(tmp_path):
    """A merged-/usr root, as Debian's: /lib is a symlink into usr."""
    r = tmp_path / "root"
    (r / "usr" / "lib").mkdir(parents=True)
    os.symlink("usr/lib", r / "lib")
    return r


def assert_ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    start, ready = sentinels(result.stdout)
    assert (start.kind, ready.kind) == (protocol.HEADERS_START, protocol.HEADERS_READY)
    assert start.ts is not None and ready.ts is not None and start.ts <= ready.ts
    assert result.stderr == ""


def assert_failed(result, *words):
    assert result.returncode == 1, result.stdout + result.stderr
    start, failed = sentinels(result.stdout)
    assert (start.kind, failed.kind) == (protocol.HEADERS_START, protocol.HEADERS_FAILED)
    error = failed.fields["error"]
    assert "\n" not in error and "Traceback" not in result.stdout + result.stderr
    for word in words:
        assert word in error, error
    return error


# --- install, fast path --------------------------------------------------------------

def test_install_then_fast_path(root, tmp_path):
    tarball = make_tarball(tmp_path / "h.tar.gz", debian_like())
    first = worker(root, tarball)
    assert_ok(first)
    assert status(root) == "ready\n"
    build = root / "usr" / "lib" / "modules" / REL / "build"   # through the /lib symlink
    assert os.readlink(build) == BUILD
    tree = root / "usr" / "src" / f"linux-headers-{REL}"
    assert (tree / "Makefile").read_text() == "include /usr/src/linux-headers-6.1.0-99-common/Makefile\n"
    fixdep = tree / "scripts" / "basic" / "fixdep"          # Debian's relative links resolve
    assert fixdep.read_bytes() == b"\x7fELF fixdep\n" and stat.S_IMODE(fixdep.stat().st_mode) == 0o755
    assert (root / "usr/src/linux-headers-6.1.0-99-common/include/linux/module.h").is_file()
    assert (tree / "Makefile").stat().st_mtime == 1_700_000_000
    for t in (tree, root / "usr/src/linux-headers-6.1.0-99-common", root / "usr/lib/linux-kbuild-6.1"):
        marker = json.loads((t / headers.MARKER).read_text())
        assert marker == {"installed_by": "kindling", "release": REL,
                          "trees": ["usr/lib/linux-kbuild-6.1", "usr/src/linux-headers-6.1.0-99-common",
                                    f"usr/src/linux-headers-{REL}"]}
    assert sorted(os.listdir(root / "usr" / "src")) == ["linux-headers-6.1.0-99-common",
                                                      f"linux-headers-{REL}"]  # no staging left
    (installed,) = log_lines(root)
    assert installed.startswith(f"kindling-headers: installed 5 files for {REL} in ")

    before = (tree / "Makefile").stat()
    second = worker(root, tarball)
    assert_ok(second)
    assert log_lines(root) == [installed, "kindling-headers: already installed (fast path)"]
    after = (tree / "Makefile").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not re-extracted
    assert status(root) == "ready\n"


def test_fast_path_needs_no_tarball(root, tmp_path):
    assert_ok(worker(root, make_tarball(tmp_path / "h.tar.xz", debian_like(), "xz")))
    again = worker(root, tmp_path / "gone.tar.gz")
    assert_ok(again)
    assert log_lines(root)[-1] == "kindling-headers: already installed (fast path)"


def test_absolute_lib_symlink_is_resolved_inside_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "usr" / "lib").mkdir(parents=True)
    os.symlink("/usr/lib", root / "lib")     # absolute: a chroot would resolve it in the root
    assert_ok(worker(root, make_tarball(tmp_path / "h.tar.gz", debian_like())))
    assert os.readlink(root / "usr" / "lib" / "modules" / REL / "build") == BUILD
    assert not os.path.lexists(f"/usr/lib/modules/{REL}")


def test_interrupted_install_is_redone(root, tmp_path):
    tarball = make_tarball(tmp_path / "h.tar.gz", debian_like())
    assert_ok(worker(root, tarball))
    # power-off mid-way through a re-install: link not yet made, staging left, a tree half gone
    build = root / "usr" / "lib" / "modules" / REL / "build"
    build.unlink()
    (root / "usr/src/linux-headers-6.1.0-99-common/Makefile").unlink()
    (root / "usr" / "src" / headers.STAGING / "junk").mkdir(parents=True)
    result = worker(root, tarball)
    assert_ok(result)
    assert log_lines(root)[-1].startswith("kindling-headers: installed 5 files")
    assert os.readlink(build) == BUILD
    assert (root / "usr/src/linux-headers-6.1.0-99-common/Makefile").is_file()
    assert not (root / "usr" / "src" / headers.STAGING).exists()


# --- failures --------------------------------------------------------------------------

def test_corrupt_tarball_fails_with_a_reason(root, tmp_path):
    garbage = tmp_path / "bad.tar.gz"
    garbage.write_bytes(b"this is not a tarball\n" * 100)
    result = worker(root, garbage)
    assert_failed(result, str(garbage), "invalid header")
    assert status(root) == "failed\n"
    assert not os.path.lexists(root / "usr" / "lib" / "modules" / REL / "build")
    assert not (root / "usr" / "src" / headers.STAGING).exists()


def test_truncated_tarball_fails_and_leaves_nothing(root, tmp_path):
    good = make_tarball(tmp_path / "h.tar.gz", debian_like() + [
        (f"usr/src/linux-headers-{REL}/big", "file", os.urandom(1 << 20))])
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[:-4096])
    assert_failed(worker(root, cut), str(cut))
    assert status(root) == "failed\n"
    assert os.listdir(root / "usr" / "src") == []


def test_missing_tarball_is_reported_by_the_worker(root):
    result = worker(root)       # the host has no /usr/lib/kindling/headers
    assert_failed(result, f"no kernel headers tarball for {REL} in {headers.HEADERS_DIR}")
    assert status(root) == "failed\n"


def test_unknown_argument_fails_without_a_traceback(root):
    result = worker(root, None, REL, "--frobnicate", "1")
    assert_failed(result, "unknown argument '--frobnicate'", "usage:")


UNSAFE = {
    "absolute name": ([("/etc/evil", "file", b"x")], "unsafe member name"),
    "dot-dot name": ([("usr/src/a/../../../evil", "file", b"x")], "unsafe member name"),
    "outside the trees": ([("etc/passwd", "file", b"x")], "outside usr/src/<tree>"),
    "symlink escaping": ([("usr/src/a", "dir", None), ("usr/src/a/up", "symlink", "../../../../outside")],
                         "points outside the archive"),
    "absolute symlink": ([("usr/src/a", "dir", None), ("usr/src/a/etc", "symlink", "/etc")], "is not relative"),
    "below a symlink": ([("usr/src/a", "dir", None), ("usr/src/a/l", "symlink", "."),
                         ("usr/src/a/l/x", "file", b"x")], "lies below the symlink"),
    "hardlink": ([("usr/src/a", "dir", None), ("usr/src/a/f", "file", b"x"),
                  ("usr/src/a/g", "hardlink", "usr/src/a/f")], "neither a file, a directory nor a symlink"),
    "fifo": ([("usr/src/a", "dir", None), ("usr/src/a/p", "fifo", None)], "neither a file"),
    "tree as a symlink": ([("usr/src/a", "symlink", "linux-headers-6.1.0-99-common")], "is a symlink"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archives_are_refused(case, tmp_path):
    members, reason = UNSAFE[case]
    root = tmp_path / "deep" / "root"
    root.mkdir(parents=True)
    tarball = make_tarball(tmp_path / "evil.tar.gz", debian_like() + members)
    assert_failed(worker(root, tarball), reason)
    assert status(root) == "failed\n"
    assert sorted(os.listdir(tmp_path)) == ["deep", "evil.tar.gz"]
    assert sorted(os.listdir(tmp_path / "deep")) == ["root"]
    assert not os.path.lexists(root / "lib" / "modules" / REL / "build")
    assert os.listdir(root / "usr" / "src") == []


def test_a_tree_we_did_not_install_is_not_replaced(root, tmp_path):
    foreign = root / "usr" / "src" / f"linux-headers-{REL}"
    foreign.mkdir(parents=True)
    (foreign / "Makefile").write_text("theirs\n")
    assert_failed(worker(root, make_tarball(tmp_path / "h.tar.gz", debian_like())),
                  f"/usr/src/linux-headers-{REL} exists and was not installed by kindling")
    assert (foreign / "Makefile").read_text() == "theirs\n"


# --- stale releases -------------------------------------------------------------------------

def test_stale_release_we_installed_is_removed_a_foreign_one_kept(root, tmp_path):
    assert_ok(worker(root, make_tarball(tmp_path / "old.tar.gz", debian_like(OLD, "6.1.0-98")), OLD))
    old_build = root / "usr" / "lib" / "modules" / OLD / "build"
    assert os.readlink(old_build) == f"/usr/src/linux-headers-{OLD}"
    # headers somebody else installed, with their link
    foreign = root / "usr" / "src" / "linux-headers-5.10.0-1-amd64"
    foreign.mkdir()
    (foreign / "Makefile").write_text("theirs\n")
    (root / "usr" / "lib" / "modules" / "5.10.0-1-amd64").mkdir()
    os.symlink("/usr/src/linux-headers-5.10.0-1-amd64", root / "usr/lib/modules/5.10.0-1-amd64/build")

    assert_ok(worker(root, make_tarball(tmp_path / "new.tar.gz", debian_like())))
    assert sorted(os.listdir(root / "usr" / "src")) == [
        "linux-headers-5.10.0-1-amd64", "linux-headers-6.1.0-99-common", f"linux-headers-{REL}"]
    assert not os.path.lexists(root / "usr" / "lib" / "modules" / OLD)   # its link, and its dir
    assert (foreign / "Makefile").read_text() == "theirs\n"
    assert os.readlink(root / "usr/lib/modules/5.10.0-1-amd64/build") == "/usr/src/linux-headers-5.10.0-1-amd64"
    # the kbuild tree both releases use is the new one's now
    assert json.loads((root / "usr/lib/linux-kbuild-6.1" / headers.MARKER).read_text())["release"] == REL
    assert log_lines(root)[-1] == ("kindling-headers: removed stale headers: "
                                   f"usr/src/linux-headers-6.1.0-98-common, usr/src/linux-headers-{OLD}")


# --- priority ----------------------------------------------------------------------------

def test_priority_is_lowered_first(root, tmp_path):
    """The tarball is a FIFO, so the worker waits, alive, until we feed it."""
    fifo = tmp_path / "h.tar.gz"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "initsys.headers", "--root", str(root), "--release", REL,
                             "--tarball", str(fifo)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        start = protocol.find_sentinel(proc.stdout.readline())[1]
        assert start.kind == protocol.HEADERS_START
        assert status(root) == "running\n"
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(fields[16]) == 19                       # field 19 of stat: nice
        ionice = subprocess.run(["ionice", "-p", str(proc.pid)], capture_output=True, text=True, timeout=10)
        assert ionice.stdout.strip() == "idle", ionice
        fifo.write_bytes(make_tarball(tmp_path / "real.tar.gz", debian_like()).read_bytes())
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0
    assert [m.kind for m in sentinels(rest)] == [protocol.HEADERS_READY]


# --- Debian's real headers -------------------------------------------------------------------

def test_debians_real_headers_install(root):
    from image_build import build, cache, debs, headers as image_headers, kernel

    cache_dir = cache.default_cache_dir()
    debs.use_memo(cache_dir)
    kern = kernel.resolve(None, None, cache_dir)
    built = image_headers.build(kern, cache_dir, build.builder_hash())
    assert_ok(worker(root, built.tarball, kern.release, timeout=300))
    build = root / "lib" / "modules" / kern.release / "build"
    assert os.readlink(build) == f"/usr/src/linux-headers-{kern.release}"   # absolute: the guest's /
    tree = root / "usr" / "src" / f"linux-headers-{kern.release}"
    assert (tree / "Makefile").is_file() and (tree / ".config").is_file()
    assert (tree / "scripts" / "basic" / "fixdep").is_file()   # from linux-kbuild
    assert (tree / "include" / "generated" / "autoconf.h").is_file()
    files = int(log_lines(root)[-1].split("installed ")[1].split()[0])
    assert files > 10000


# --- PID 1's side ----------------------------------------------------------------------------

def test_launch_only_when_wanted_and_shipped(tmp_path):
    cfg = protocol.validate_config({"entrypoint": ["true"]})
    skip = protocol.validate_config({"entrypoint": ["true"], "skip_kernel_headers": True})
    shipped = tmp_path / "headers"
    assert headers_launch.wanted(cfg, shipped) is False            # an initrd built --no-headers
    shipped.mkdir()
    assert headers_launch.wanted(cfg, shipped) is False
    (shipped / headers.tarball_name(REL, "gz")).write_bytes(b"")
    assert headers_launch.wanted(cfg, shipped) is True
    assert headers_launch.wanted(skip, shipped) is False


def test_tarball_lookup(tmp_path):
    with pytest.raises(headers.Failed, match=f"no kernel headers tarball for {REL}"):
        headers.find_tarball(REL, str(tmp_path))
    (tmp_path / headers.tarball_name(REL, "gz")).write_bytes(b"")
    (tmp_path / headers.tarball_name(OLD, "gz")).write_bytes(b"")
    assert headers.find_tarball(REL, str(tmp_path)) == str(tmp_path / f"linux-headers-{REL}.tar.gz")
    (tmp_path / headers.tarball_name(REL, "xz")).write_bytes(b"")
    with pytest.raises(headers.Failed, match=f"2 kernel headers tarballs for {REL} in .*: linux-headers-{REL}.tar.gz, "):
        headers.find_tarball(REL, str(tmp_path))
