"""The kernel-headers tarball (image_build/headers.py) and where it goes in the initrd.

The tarball is built from Debian's real linux-headers packages (downloaded once
into the shared cache, like the kernel), so these tests need apt and the network
the first time.
"""

import dataclasses
import gzip
import stat
import tarfile

import pytest

from image_build import cache, debs, headers, kernel
from image_build.build import BuildOptions, build_all, builder_hash
from image_build.cli import cli
from image_build.errors import BuildError
from initsys.headers import HEADERS_DIR
from tests.newc import read_archive, split_initrd


@pytest.fixture(scope="module")
def cache_dir():
    path = cache.default_cache_dir()
    debs.use_memo(path)
    return path


@pytest.fixture(scope="module")
def kern(cache_dir):
    return kernel.resolve(None, None, cache_dir)


@pytest.fixture(scope="module")
def built(kern, cache_dir):
    return headers.build(kern, cache_dir, builder_hash())


@pytest.fixture(scope="module")
def members(built):
    with tarfile.open(built.tarball, "r:gz") as tar:
        return tar.getmembers()


@pytest.fixture(scope="module")
def images(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("images")
    return (build_all(BuildOptions(out_dir=out / "with", cache_dir=cache_dir)),
            build_all(BuildOptions(out_dir=out / "without", cache_dir=cache_dir, headers=False)))


def test_packages_are_the_kernels_version(kern):
    wanted = headers.packages_for(kern)
    abi = kern.release.rsplit("-", 2)[0]                     # 6.1.0-57-cloud-amd64 -> 6.1.0-57
    major_minor = ".".join(kern.release.split(".")[:2])
    assert [p.package for p in wanted] == [f"linux-headers-{kern.release}",
                                           f"linux-headers-{abi}-common", f"linux-kbuild-{major_minor}"]
    assert {p.version for p in wanted} == {kern.package.version}


def test_another_version_than_the_kernels_is_an_error_naming_both(kern):
    other = dataclasses.replace(kern, package=dataclasses.replace(kern.package, version="0.0.1-1"))
    with pytest.raises(BuildError) as e:
        headers.packages_for(other)
    message = str(e.value)
    assert f"linux-headers-{kern.release} 0.0.1-1 is needed" in message
    assert f"apt offers only: {kern.package.version}" in message


def test_tarball_holds_the_three_trees(built, members, kern):
    assert built.compression == "gz" and built.tarball.read_bytes()[:2] == b"\x1f\x8b"
    assert built.tarball.name == f"linux-headers-{kern.release}.tar.gz"
    names = [m.name for m in members]
    abi = kern.release.rsplit("-", 2)[0]
    trees = {"/".join(n.split("/")[:3]) for n in names}
    assert trees == {f"usr/src/linux-headers-{kern.release}", f"usr/src/linux-headers-{abi}-common",
                     "usr/lib/linux-kbuild-6.1"}
    assert f"usr/src/linux-headers-{kern.release}/Makefile" in names
    assert f"usr/src/linux-headers-{kern.release}/.config" in names
    scripts = next(m for m in members if m.name == f"usr/src/linux-headers-{kern.release}/scripts")
    assert scripts.issym() and scripts.linkname == "../../lib/linux-kbuild-6.1/scripts"
    assert names == sorted(names, key=str.encode)
    assert all(m.isfile() or m.isdir() or m.issym() for m in members)
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "root", "root")}
    assert len({m.mtime for m in members}) == 1
    assert not [m for m in members if m.mode & ~0o755]
    assert len(members) > 10000


def test_tarball_is_reproducible(kern, cache_dir, built, tmp_path):
    roots = [debs.fetch_and_extract(p, cache_dir, headers.DEB_KIND)[1] for p in headers.packages_for(kern)]
    for name in ("a.tar.gz", "b.tar.gz"):
        headers.tarball_for(roots, kern.release, tmp_path / name, "gz")
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    assert (tmp_path / "a.tar.gz").read_bytes() == built.tarball.read_bytes()
    assert gzip.open(tmp_path / "a.tar.gz").read(100)   # a gzip stream without name or time
    assert (tmp_path / "a.tar.gz").read_bytes()[4:8] == b"\0\0\0\0"


def test_a_given_kernel_gets_no_headers(kern, cache_dir, capsys):
    given = dataclasses.replace(kern, package=None, origin="--kernel /x/vmlinuz")
    assert headers.build(given, cache_dir, builder_hash()) is None
    assert "kernel headers: none for --kernel /x/vmlinuz" in capsys.readouterr().err


def test_initrd_carries_the_tarball_in_a_plain_first_segment(images, built):
    with_h, without = images
    plain, main = split_initrd(with_h.initrd.read_bytes())
    assert len(plain) == 1
    by_name = {e["name"]: e for e in plain[0]}
    name = f"{HEADERS_DIR}/{built.tarball.name}".lstrip("/")
    assert sorted(by_name) == ["usr", "usr/lib", "usr/lib/kindling", "usr/lib/kindling/headers", name]
    assert by_name[name]["body"] == built.tarball.read_bytes()
    assert stat.S_IMODE(by_name[name]["mode"]) == 0o644
    assert main[:6] == b"070701"                          # the main archive follows, uncompressed
    assert any(e["name"] == "init" for e in read_archive(main)[0])
    assert with_h.info["headers"] == {"path_in_initrd": "/" + name, "release": with_h.kernel_release,
                                      "size": built.tarball.stat().st_size, "compression": "gz"}
    # --no-headers: the same main archive, no segment, and its own cache entry
    assert without.info["headers"] is None
    assert without.initrd.read_bytes() == main
    assert split_initrd(without.initrd.read_bytes())[0] == []
    assert with_h.info["initrd"]["headers_segment_size"] == len(with_h.initrd.read_bytes()) - len(main)


def test_the_kernel_reads_the_segment_then_the_rest(images):
    """Both parts are archives the kernel can read: the plain one ends at a 4-aligned trailer."""
    raw = images[0].initrd.read_bytes()
    entries, end = read_archive(raw)
    assert end % 4 == 0 and raw[end:end + 6] == b"070701"
    main, after = read_archive(raw, end)
    assert after == len(raw) and any(e["name"] == "init" for e in main)


def test_cli_no_headers(cache_dir, tmp_path, capsys):
    assert cli(["build", "--no-headers", "--out", str(tmp_path / "o"), "--cache-dir", str(cache_dir)]) == 0
    assert "headers none" in capsys.readouterr().out
    assert cli(["build", "--out", str(tmp_path / "p"), "--cache-dir", str(cache_dir)]) == 0
    assert "headers /usr/lib/kindling/headers/linux-headers-" in capsys.readouterr().out
