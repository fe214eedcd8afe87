"""Reading and validating config.json from the config disk (vdc)."""

from initsys import console, protocol
from initsys.rootfs import mount_readonly

CONFIG_MOUNT = "/mnt/config"


def load(device):
    """Mount the config disk read-only and return the validated Config.

    Raises OSError (disk unreadable) or protocol.ConfigError (bad content).
    """
    mount_readonly(device, CONFIG_MOUNT, "config disk")
    path = CONFIG_MOUNT + "/config.json"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise OSError(f"config disk {device}: cannot read /config.json: {e.strerror}") from None
    return protocol.parse_config(data)


def warn(cfg):
    """One console line per config.json field Kindling does not honour (never a silent drop)."""
    for line in cfg.warnings:
        console.write_console(f"kindling: warning: {line}")
