"""Reading and validating config.json from the config disk (vdc)."""

from initsys import protocol
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
