"""Where things live: the artifact cache and per-run instance directories.

    $KINDLING_CACHE (~/.cache/kindling)            built kernel/initrd/rootfs, reused
    $KINDLING_HOME  (~/.local/share/kindling)
        instances/<id>/
            logs/app.log    the serial console, appended to by QEMU
            logs/vmm.log    QEMU's own stderr
            qmp.sock        QMP control socket
            config.img      config disk (/dev/vdc)
            overlay.img     writable overlay disk (/dev/vdb)
"""

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import die

ENV_HOME = "KINDLING_HOME"
ENV_CACHE = "KINDLING_CACHE"

# sun_path is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


def kindling_home() -> Path:
    value = os.environ.get(ENV_HOME)
    return Path(value).absolute() if value else Path.home() / ".local" / "share" / "kindling"


def cache_dir() -> Path:
    value = os.environ.get(ENV_CACHE)
    return Path(value).absolute() if value else Path.home() / ".cache" / "kindling"


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
    def config_img(self) -> Path:
        return self.dir / "config.img"

    @property
    def overlay_img(self) -> Path:
        return self.dir / "overlay.img"

    @classmethod
    def create(cls, home: Path | None = None) -> "Instance":
        home = home or kindling_home()
        instance_id = secrets.token_hex(6)
        instance = cls(instance_id, home / "instances" / instance_id)
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
        shutil.rmtree(self.dir, ignore_errors=True)
