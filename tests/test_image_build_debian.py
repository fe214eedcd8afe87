"""The Debian base (image_build/debian.py), built for real: mmdebstrap downloads the
packages from deb.debian.org on the first run (~1 min), later runs hit the cache.

What is checked: the image is erofs and holds what systemd mode needs (/sbin/init ->
systemd, dbus, udev, qemu-ga, an empty machine-id, no fstab entries), owners and
modes survive, it is reproducible from its bootstrap, and the errors are clear.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from image_build import cache, debian, rootfs
from image_build.build import BuildOptions, build_all, image_command
from image_build.cli import cli
from image_build.errors import BuildError
from image_build.run import run

EROFS_MAGIC = bytes.fromhex("e2e1f5e0")  # 0xE0F5E1E2 little-endian, at offset 1024
WARM_BUILD_LIMIT = 15.0                  # seconds; ~1 s here, the machine is shared and noisy


@pytest.fixture(scope="module")
def cache_dir() -> Path:
    return cache.default_cache_dir()


@pytest.fixture(scope="module")
def debian_build(tmp_path_factory, cache_dir):
    assert os.geteuid() == 0, \
        "the Debian base needs root: mmdebstrap's root mode, and file owners in the image"
    assert shutil.which("mmdebstrap"), "mmdebstrap not found: run `make test` (it installs it)"
    return build_all(BuildOptions(out_dir=tmp_path_factory.mktemp("debian"), base="debian",
                                  cache_dir=cache_dir))


@pytest.fixture(scope="module")
def tree(debian_build, tmp_path_factory):
    """The image extracted by fsck.erofs (which also checks it), owners and modes kept."""
    root = tmp_path_factory.mktemp("debian-tree") / "root"
    run(["fsck.erofs", f"--extract={root}", "--preserve", debian_build.rootfs], timeout=600)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def in_chroot(root: Path, *argv: str) -> str:
    """Run the image's own program argv chrooted into the extracted image."""
    return run(["chroot", root, *argv], timeout=60).stdout


def test_the_image_is_erofs_and_its_command_is_init(debian_build):
    with open(debian_build.rootfs, "rb") as f:
        f.seek(1024)
        assert f.read(4) == EROFS_MAGIC
    info = debian_build.info
    assert info["command"] == ["/sbin/init"]
    assert info["rootfs"]["format"] == "erofs"
    assert info["rootfs"]["source"].startswith("Debian bookworm (mmdebstrap ")
    assert 40 << 20 < info["rootfs"]["size"] < 400 << 20, info["rootfs"]


def test_image_command():
    assert image_command("debian", None) == ["/sbin/init"]
    assert image_command("busybox", None) is None
    assert image_command("busybox", Path("/some/rootfs.tar")) is None


def test_init_is_systemd(tree):
    assert os.readlink(tree / "sbin") == "usr/sbin"  # merged /usr
    assert os.readlink(tree / "usr/sbin/init") == "/lib/systemd/systemd"
    assert in_chroot(tree, "readlink", "-f", "/sbin/init") == "/usr/lib/systemd/systemd\n"
    assert "systemd 252" in in_chroot(tree, "/lib/systemd/systemd", "--version")


def test_the_packages_are_installed(tree):
    status = (tree / "var/lib/dpkg/status").read_text()
    installed = {stanza.split("\n", 1)[0].removeprefix("Package: ")
                 for stanza in status.split("\n\n") if "Status: install ok installed" in stanza}
    assert set(debian.PACKAGES) <= installed, set(debian.PACKAGES) - installed
    # merged /usr by symlinks: no usrmerge, and so no perl beyond perl-base
    assert not {"usrmerge", "perl"} & installed
    programs = ("/usr/sbin/qemu-ga", "/usr/bin/dbus-daemon", "/usr/lib/systemd/systemd-logind",
                "/usr/bin/udevadm", "/usr/lib/systemd/systemd-udevd", "/usr/bin/ps",
                "/sbin/modprobe", "/usr/bin/apt-get")
    in_chroot(tree, "sh", "-c", 'for p; do test -x "$p" || { echo "$p"; exit 1; }; done', "-",
              *programs)


def test_what_systemd_needs_from_the_image(tree):
    # empty machine-id: not a first boot; systemd generates the id on the writable root
    assert (tree / "etc/machine-id").read_bytes() == b""
    assert not os.path.lexists(tree / "var/lib/dbus/machine-id")
    # no fstab entries that could fail
    fstab = (tree / "etc/fstab").read_text().splitlines()
    assert [line for line in fstab if line.strip() and not line.lstrip().startswith("#")] == []
    # /dev/virtio-ports/NAME links, and qemu-ga started when its port appears
    rules = (tree / "usr/lib/udev/rules.d/50-udev-default.rules").read_text()
    assert 'SUBSYSTEM=="virtio-ports", KERNEL=="vport*", ATTR{name}=="?*", ' \
           'SYMLINK+="virtio-ports/$attr{name}"' in rules
    assert "org.qemu.guest_agent.0" in (tree / "usr/lib/udev/rules.d/60-qemu-guest-agent.rules"
                                        ).read_text()
    # the ACPI power button reaches logind (input devices tagged power-switch)
    assert "power-switch" in (tree / "usr/lib/udev/rules.d/70-power-switch.rules").read_text()
    assert (tree / "usr/share/dbus-1/system.d/org.freedesktop.login1.conf").is_file()


def test_nothing_of_the_build_host_is_in_the_image(tree):
    assert (tree / "etc/hostname").read_text() == "kindling\n"
    assert (tree / "etc/resolv.conf").read_text() == ""
    man = tree / "usr/share/man"          # documentation is kept out (debian.DPKG_OPTIONS)
    assert not man.exists() or list(man.iterdir()) == []


def test_owners_modes_and_times_are_kept(tree):
    shadow = os.lstat(tree / "etc/shadow")
    assert (shadow.st_uid, shadow.st_gid, stat.S_IMODE(shadow.st_mode)) == (0, 42, 0o640)
    # (setuid bits are checked in the VM: fsck.erofs 1.5 chowns after chmod, clearing them)
    assert stat.S_IMODE(os.lstat(tree / "tmp").st_mode) == 0o1777
    newest = max(os.lstat(os.path.join(d, n)).st_mtime
                 for d, dirs, files in os.walk(tree) for n in dirs + files)
    assert newest <= debian.SOURCE_DATE_EPOCH


def test_a_second_build_is_cached_and_fast(debian_build, cache_dir, tmp_path):
    start = time.monotonic()
    again = build_all(BuildOptions(out_dir=tmp_path, base="debian", cache_dir=cache_dir))
    elapsed = time.monotonic() - start
    assert again.info["rootfs"]["cached"] is True
    assert elapsed < WARM_BUILD_LIMIT, f"a cached Debian build took {elapsed:.1f} s"
    assert cache.file_sha256(again.rootfs) == cache.file_sha256(debian_build.rootfs)


def test_the_image_is_reproducible_from_its_bootstrap(debian_build, cache_dir, tmp_path):
    """Staging the cached bootstrap again and making the image again gives the same bytes."""
    boot = debian.describe(cache_dir)
    tarball = debian.bootstrap(boot, tmp_path)       # cached: no download
    try:
        debian.stage(tarball, tmp_path / "tree")
        again = tmp_path / "again.img"
        rootfs.make_image(tmp_path / "tree", again, "erofs",
                          key=debian_build.info["rootfs"]["key"], epoch=debian.SOURCE_DATE_EPOCH)
        assert cache.file_sha256(again) == cache.file_sha256(debian_build.rootfs)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)   # ~250 MB


def test_mmdebstrap_argv_has_no_shell_and_pins_the_sources():
    argv = [str(a) for a in debian.mmdebstrap_argv(Path("out.tar"))]
    assert argv[0] == "mmdebstrap" and "--variant=minbase" in argv
    assert f"--include={','.join(debian.PACKAGES)}" in argv
    sources = argv[argv.index("out.tar") + 1:]
    assert sources == list(debian.SOURCES)
    assert all("deb.debian.org" in s and f"signed-by={debian.KEYRING}" in s for s in sources)


# --- errors --------------------------------------------------------------------------

def test_missing_mmdebstrap_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BuildError, match=r"mmdebstrap not found: .*apt-get install mmdebstrap"):
        debian.describe(tmp_path)


def test_base_and_rootfs_together_is_an_error_naming_both(tmp_path, capsys):
    with pytest.raises(BuildError, match=rf"--base debian and --rootfs {tmp_path} cannot be used"):
        build_all(BuildOptions(out_dir=tmp_path / "out", base="debian", rootfs=tmp_path))
    assert cli(["build", "--base", "busybox", "--rootfs", str(tmp_path), "--out",
                str(tmp_path / "out")]) == 1
    assert f"--base busybox and --rootfs {tmp_path} cannot be used together" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_base(tmp_path):
    with pytest.raises(BuildError, match="--base 'alpine': expected one of busybox, debian"):
        build_all(BuildOptions(out_dir=tmp_path, base="alpine"))
