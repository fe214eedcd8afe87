"""Where things live: the artifact cache and the instance directories.

    $KINDLING_CACHE (~/.cache/kindling)            built kernel/initrd/rootfs, reused
    $KINDLING_HOME  (~/.local/share/kindling)
        names.lock          held while a new instance's name is checked and claimed
        instances/<id>/
            metadata.json   config, times, state history, persisted markers, timeline
            meta.lock       held while metadata.json is read-modified-written (locks.py)
            logs.lock       held while the serial log is rotated (exclusive) or listed (shared)
            logs/app.log    the serial console, appended to by QEMU; app.log.1, ... rotated
            logs/vmm.log    QEMU's own stderr, appended to across boots
            qmp.sock        QMP control socket
            agent.sock      the agent's virtio-serial port (host end)
            qga.sock        qemu-guest-agent's virtio-serial port (with --qga)
            grpc.sock       the agent's gRPC front end's virtio-serial port (with --grpc)
            qemu.pid        QEMU's pidfile (QEMU holds a lock on it while it runs)
            config.img      config disk (/dev/vdc)
            overlay.img     writable overlay disk (/dev/vdb), kept across restarts
            images/         kernel, initrd, rootfs (from the image builder's cache)
            snapshot/       after `standby`: vmstate + record.json (host_shim/snapshot.py)
"""

import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import locks
from .errors import die

ENV_HOME = "KINDLING_HOME"
ENV_CACHE = "KINDLING_CACHE"

# sun_path is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107
NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
ID_BYTES = 6
LOCK_TIMEOUT = 60.0


def kindling_home() -> Path:
    value = os.environ.get(ENV_HOME)
    return Path(value).absolute() if value else Path.home() / ".local" / "share" / "kindling"


def cache_dir() -> Path:
    value = os.environ.get(ENV_CACHE)
    return Path(value).absolute() if value else Path.home() / ".cache" / "kindling"


def instances_dir(home: Path) -> Path:
    return Path(home) / "instances"


@dataclass(frozen=True)
class Instance:
    id: str
    dir: Path

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def app_log(self) -> Path:
        return self.logs_dir / "app.log"

    @property
    def vmm_log(self) -> Path:
        return self.logs_dir / "vmm.log"

    @property
    def qmp_socket(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def agent_socket(self) -> Path:
        """The host end of the agent's virtio-serial port (a unix socket QEMU listens on)."""
        return self.dir / "agent.sock"

    @property
    def qga_socket(self) -> Path:
        """The host end of qemu-guest-agent's virtio-serial port (`create --qga`)."""
        return self.dir / "qga.sock"

    @property
    def grpc_socket(self) -> Path:
        """The host end of the agent's gRPC virtio-serial port (`create --grpc`)."""
        return self.dir / "grpc.sock"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def metadata_path(self) -> Path:
        return self.dir / "metadata.json"

    @property
    def meta_lock(self) -> Path:
        return self.dir / "meta.lock"

    @property
    def logs_lock(self) -> Path:
        return self.dir / "logs.lock"

    @property
    def config_img(self) -> Path:
        return self.dir / "config.img"

    @property
    def overlay_img(self) -> Path:
        return self.dir / "overlay.img"

    @property
    def images_dir(self) -> Path:
        return self.dir / "images"

    def exists(self) -> bool:
        return self.metadata_path.exists()

    @classmethod
    def create(cls, home: Path | None = None) -> "Instance":
        home = Path(home or kindling_home())
        instance_id = secrets.token_hex(ID_BYTES)
        instance = cls(instance_id, instances_dir(home) / instance_id)
        if len(os.fsencode(instance.qmp_socket.absolute())) > _MAX_SOCKET_PATH:
            die(f"instance directory path too long for a unix socket: {instance.dir}",
                hint=f"set ${ENV_HOME} to a shorter directory")
        try:
            instance.logs_dir.mkdir(parents=True)
            # Created before QEMU starts, so following the console never races its creation.
            instance.app_log.touch()
        except OSError as e:
            die(f"cannot create instance directory {instance.dir}: {e.strerror}",
                hint=f"set ${ENV_HOME} to a writable directory")
        return instance

    def remove(self) -> None:
        """Remove everything of the instance: its folder and its network namespace."""
        from . import netns
        netns.destroy_if_present(self.id)
        shutil.rmtree(self.dir, ignore_errors=True)


def home_lock(home: Path, timeout: float = LOCK_TIMEOUT):
    """Held while a name is checked and claimed."""
    instances_dir(home).mkdir(parents=True, exist_ok=True)
    return locks.locked(Path(home) / "names.lock", timeout=timeout)


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        die(f"invalid instance name {name!r}",
            hint="use letters, digits, '_', '.' and '-', starting with a letter or digit "
                 "(at most 63 characters)")
    return name


def all_instances(home: Path) -> list[Instance]:
    base = instances_dir(home)
    try:
        entries = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        instance = Instance(entry, base / entry)
        if not entry.startswith(".") and instance.exists():
            found.append(instance)
    return found
