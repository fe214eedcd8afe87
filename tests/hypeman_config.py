"""config.json and config disks the way hypeman's host writes them, for tests.

hypeman's host (lib/instances/configdisk.go) marshals its vmconfig.Config with Go's
encoding/json -- `<`, `>` and `&` escaped as \\u003c \\u003e \\u0026, nil slices as
`null`, `workdir` and `init_mode` always present (no omitempty, "" when unset), the
omitempty bools left out when false -- and puts it on an ext4 image without a
journal, 4096-byte blocks.  `go_json` reproduces that encoding; `config_disk` the disk.
"""

import json
import subprocess
from pathlib import Path

MKFS_TIMEOUT = 60


def go_json(config: dict) -> bytes:
    """JSON as Go's encoding/json writes it: compact, HTML characters escaped."""
    text = json.dumps(config, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(ch, esc)
    return text.encode()


def hypeman_config(entrypoint=None, cmd=None, *, workdir="", env=None, **fields) -> dict:
    """vmconfig.Config's fields in its order; false omitempty bools are left out."""
    config = {"entrypoint": entrypoint, "cmd": cmd, "workdir": workdir, "env": env or {},
              "network_enabled": fields.pop("network_enabled", False)}
    for name in ("guest_ip", "guest_cidr", "guest_gw", "guest_dns", "volume_mounts"):
        if fields.get(name):
            config[name] = fields.pop(name)
    config["init_mode"] = fields.pop("init_mode", "")
    for name in ("skip_kernel_headers", "skip_guest_agent"):
        if fields.pop(name, False):
            config[name] = True
    config.update(fields)      # egress_proxy, or anything newer
    return config


def config_disk(directory: Path, data: bytes, name: str = "config.ext4") -> Path:
    """An ext4 image without a journal, -b 4096, holding `data` as /config.json."""
    src = directory / f"{name}.d"
    src.mkdir()
    (src / "config.json").write_bytes(data)
    image = directory / name
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-b", "4096", "-d", str(src),
                    str(image), "4M"], check=True, capture_output=True, timeout=MKFS_TIMEOUT)
    return image
