"""The Debian rootfs (`--base debian`): bookworm with systemd, bootstrapped by mmdebstrap.

The second built-in rootfs, beside busybox.  Its own command is /sbin/init
(systemd), so `kindling run --base debian` boots it in systemd mode; any other
command runs in exec mode on a full Debian userland.

Two cached steps:

1. bootstrap: `mmdebstrap` writes a tarball into <cache>/debian/<key>/, keyed by
   the suite, the sources, the variant, the packages, the dpkg options, the
   timestamp, mmdebstrap's version and this file.  It downloads 117 packages
   (~43 MB) from deb.debian.org (20-50 s here); `--force` bootstraps again with
   today's archive (the key does not change when the archive does).
2. stage: the tarball is extracted (rootfs.extract_tarball, as for a user's
   tarball) and the few host-specific files mmdebstrap copies in are replaced,
   so the image does not depend on the machine that built it.

Reproducibility: SOURCE_DATE_EPOCH makes mmdebstrap's tarball bit-identical for
the same mirror content; the erofs image clamps every mtime to the same epoch
and keeps owners (Debian needs group shadow, mail, ...), so the same tarball
always gives the same image.

What systemd needs from the image, and how it is met:
- /etc/machine-id is empty (mmdebstrap's cleanup): not a first boot (no
  systemd-firstboot prompts); systemd generates the id at boot and commits it to
  the writable overlay root, so every instance gets its own and keeps it.
- /etc/fstab has no entries: nothing to mount that could fail; Kindling's PID 1
  sets up the root.
- getty: serial-getty@ttyS0 comes from `console=ttyS0`; getty@tty1 is Debian's.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from image_build import cache, log, rootfs
from image_build.errors import BuildError
from image_build.run import run

SUITE = "bookworm"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SOURCES = tuple(
    f"deb [signed-by={KEYRING}] {mirror} {suite} main"
    for mirror, suite in (("http://deb.debian.org/debian", SUITE),
                          ("http://deb.debian.org/debian", f"{SUITE}-updates"),
                          ("http://deb.debian.org/debian-security", f"{SUITE}-security")))
# minbase: the essential set, Priority: required, apt.  The packages on top, and why:
PACKAGES = {
    "systemd": "the init of systemd mode",
    "systemd-sysv": "/sbin/init -> systemd, the image's own command",
    "udev": "device links such as /dev/virtio-ports/NAME, and input devices tagged for logind",
    "dbus": "the system bus: systemd-logind starts cleanly and powers off on the ACPI power "
            "button (`kindling stop` sends QMP system_powerdown)",
    "qemu-guest-agent": "the reference agent a benchmark compares ours with (its own "
                        "virtio-serial port, org.qemu.guest_agent.0)",
    "procps": "ps, free, pgrep, to look inside a running guest",
    "kmod": "/sbin/modprobe, which systemd's modprobe@ units call",
}
# merged /usr by symlinks, as debootstrap does: no usrmerge package, and so no perl (~40 MB).
HOOK_DIR = "/usr/share/mmdebstrap/hooks/merged-usr"
# Documentation and translations are of no use in a microVM (~55 MB); kept out by dpkg,
# also for packages installed later in the guest.
DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)
SOURCE_DATE_EPOCH = 1686355200  # 2023-06-10, the release of Debian 12.0
COMMAND = ("/sbin/init",)
TARBALL_NAME = "rootfs.tar"
HOST_FILES = {  # files mmdebstrap copies from the host, made the same everywhere
    "etc/hostname": "kindling\n",
    "etc/resolv.conf": "",  # PID 1 writes the nameserver when the network is on
}

BOOTSTRAP_TIMEOUT = 1800
VERSION_TIMEOUT = 30


@dataclass(frozen=True)
class Bootstrap:
    """A bootstrap of the Debian rootfs, described before (or instead of) running it."""
    key: str
    mmdebstrap_version: str
    entry: Path

    @property
    def tarball(self) -> Path:
        return self.entry / TARBALL_NAME

    @property
    def what(self) -> str:
        return f"Debian {SUITE} (mmdebstrap {self.mmdebstrap_version})"


def mmdebstrap_version() -> str:
    if shutil.which("mmdebstrap") is None:
        raise BuildError("mmdebstrap not found: the Debian rootfs (--base debian) is bootstrapped"
                         " with it (install it with: apt-get install mmdebstrap; `make test` does)")
    out = run(["mmdebstrap", "--version"], timeout=VERSION_TIMEOUT).stdout.split()
    if len(out) != 2 or out[0] != "mmdebstrap":
        raise BuildError(f"`mmdebstrap --version` printed {' '.join(out)!r}, expected 'mmdebstrap VERSION'")
    return out[1]


def mmdebstrap_argv(tarball: Path) -> list[str | Path]:
    return ["mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
            f"--hook-dir={HOOK_DIR}", *(f"--dpkgopt={o}" for o in DPKG_OPTIONS),
            SUITE, tarball, *SOURCES]


def describe(cache_dir: Path) -> Bootstrap:
    """The cache key of the bootstrap (cheap: asks mmdebstrap only for its version)."""
    version = mmdebstrap_version()
    key = (cache.Hasher("debian")
           .add("argv", [str(a) for a in mmdebstrap_argv(Path(TARBALL_NAME))])
           .add("epoch", SOURCE_DATE_EPOCH)
           .add("mmdebstrap", version)
           .add("builder", Path(__file__).read_bytes())
           .hexdigest())
    return Bootstrap(key, version, cache_dir / "debian" / key)


def bootstrap(boot: Bootstrap, work: Path, *, force: bool = False) -> Path:
    """The bootstrap's tarball, from the cache or made now with mmdebstrap."""
    if not force and (boot.entry / "info.json").is_file() and boot.tarball.is_file():
        log.info(f"debian bootstrap: cached ({boot.entry})")
        os.utime(boot.entry)
        return boot.tarball
    with log.step(f"Bootstrapping {boot.what} from deb.debian.org"):
        with cache.publishing_dir(boot.entry) as tmp:
            # TMPDIR: mmdebstrap's temporary chroot goes next to the cache, not to /tmp.
            run(mmdebstrap_argv(tmp / TARBALL_NAME), timeout=BOOTSTRAP_TIMEOUT,
                env={"SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH), "TMPDIR": str(work)})
            size = (tmp / TARBALL_NAME).stat().st_size
            cache.write_json(tmp / "info.json", {"suite": SUITE, "packages": list(PACKAGES),
                                                 "mmdebstrap": boot.mmdebstrap_version,
                                                 "tarball_size": size})
        log.info(f"tarball {log.human_size(size)}")
    return boot.tarball


def stage(tarball: Path, dest: Path) -> None:
    """Extract the bootstrap into `dest` and make it independent of the build host."""
    with log.step(f"Extracting {tarball}"):
        rootfs.extract_tarball(tarball, dest)
    for rel, text in HOST_FILES.items():
        path = dest / rel
        if path.is_symlink() or path.exists():
            path.unlink()
        path.write_text(text)
        os.chmod(path, 0o644)
    machine_id = dest / "etc" / "machine-id"
    if not machine_id.is_file() or machine_id.stat().st_size != 0:
        raise BuildError(f"{tarball}: /etc/machine-id should be empty after mmdebstrap's cleanup"
                         " (systemd then generates one per instance)")
    for rel in ("sbin/init", "usr/sbin/qemu-ga"):
        if not os.path.lexists(dest / rel):
            raise BuildError(f"{tarball}: /{rel} is missing (packages: {', '.join(PACKAGES)})")
