"""hypeman's wire shapes for `kindling serve`: Kindling's objects as hypeman's JSON, and
hypeman's request bodies as the keywords of the Python API (host_shim/api.py).

The shapes are read from the types of hypeman's Python SDK (Instance, Volume, Image,
PathInfo, WaitForStateResponse, the create parameters) and its server's OpenAPI document
(the Error body); nothing of theirs is copied.  Fields Kindling cannot honour are refused
with an ApiError naming the field (UNSUPPORTED), never ignored.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from . import sizes
from .info import InstanceInfo
from .state import State

GIB = 1 << 30
MAX_BODY = 1 << 20               # a create request is a few hundred bytes


class ApiError(Exception):
    """An HTTP error with hypeman's body {"code", "message"}."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def unsupported(field: str, why: str) -> ApiError:
    return ApiError(422, "unsupported_field", f"{field}: {why}")


def refuse_unsupported(body: dict, fields: dict[str, str]) -> None:
    """A 422 naming the first of `fields` (field -> why Kindling cannot honour it) that
    the request sets: never silently ignored."""
    for field, why in fields.items():
        if body.get(field) is not None:
            raise unsupported(field, why)


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


# --- instances -----------------------------------------------------------------------------

def _volume_mounts(options: dict) -> list[dict]:
    return [{"volume_id": _volume_id(v.get("image", "")), "mount_path": v.get("path"),
             "readonly": v.get("mode") in ("ro", "overlay"), "overlay": v.get("mode") == "overlay"}
            for v in options.get("volumes") or ()]


def _volume_id(image: str) -> str:
    """A named volume's id is its name; an image given by path keeps its path."""
    name = image.rsplit("/", 1)[-1]
    return name[:-4] if "/volumes/" in image and name.endswith(".img") else image


BASE_IMAGE = "kindling/"        # kindling/busybox, kindling/debian: the built-in systems


def image_of(options: dict) -> str:
    """The image an instance runs: its OCI reference, else Kindling's base system."""
    return options.get("image") or f"{BASE_IMAGE}{options.get('base') or 'busybox'}"


def image_option(image: str) -> dict:
    """create's `image` as Kindling's option: a base system named as image_of names it,
    else an OCI reference."""
    from image_build.build import BASES
    if image.startswith(BASE_IMAGE) and image[len(BASE_IMAGE):] in BASES:
        return {"base": image[len(BASE_IMAGE):]}
    return {"image": image}


def instance_json(info: InstanceInfo) -> dict:
    """An InstanceInfo as hypeman's Instance."""
    o = info.options
    exit_info = info.exit or {}
    code = exit_info.get("code")
    return {
        "id": info.id, "name": info.name, "state": str(info.state),
        "created_at": rfc3339(info.created_at), "image": image_of(o),
        "state_error": info.error if info.state is State.UNKNOWN else None,
        "env": dict(o.get("env") or ()), "exit_code": code if isinstance(code, int) else None,
        "exit_message": exit_info.get("message"),
        "has_snapshot": info.state is State.STANDBY, "hypervisor": "qemu",
        "size": f"{o['memory']}M" if "memory" in o else None, "vcpus": o.get("cpus"),
        "overlay_size": sizes.human(o["overlay_size"]) if "overlay_size" in o else None,
        "network": {"enabled": bool(o.get("net"))}, "volumes": _volume_mounts(o),
    }


def wait_json(info: InstanceInfo, timed_out: bool, error: str | None = None) -> dict:
    return {"state": str(info.state), "timed_out": timed_out,
            "state_error": error or (info.error if info.state is State.UNKNOWN else None)}


def path_info_json(stat) -> dict:
    """A StatResult (host_shim/agent_client.py) as hypeman's PathInfo."""
    if not stat.exists:
        return {"exists": False}
    return {"exists": True, "is_dir": stat.type == "dir", "is_file": stat.type == "file",
            "is_symlink": stat.type == "symlink", "link_target": stat.target,
            "mode": stat.mode, "size": stat.size}


# --- volumes and images ----------------------------------------------------------------------

def volume_json(volume, created_at: float, attachments: list[dict]) -> dict:
    """A VolumeInfo (host_shim/volumes.py) as hypeman's Volume; its id is its name."""
    return {"id": volume.name, "name": volume.name, "size_gb": volume.size // GIB,
            "created_at": rfc3339(created_at), "attachments": attachments}


def attachments(volume, instances: list[InstanceInfo]) -> list[dict]:
    """The instances that attach `volume`, as hypeman's VolumeAttachment."""
    found = []
    for info in instances:
        for mount in _volume_mounts(info.options):
            if mount["volume_id"] == volume.name:
                found.append({"instance_id": info.id, "mount_path": mount["mount_path"],
                              "readonly": mount["readonly"]})
    return found


def image_json(described: dict, created_at: float) -> dict:
    """An image as `Kindling.image_list` describes it, as hypeman's Image (always ready:
    Kindling pulls and converts before it answers)."""
    config = described.get("config") or {}
    env = dict(item.partition("=")[::2] for item in config.get("Env") or [])
    return {"name": described["ref"], "digest": described.get("digest", ""), "status": "ready",
            "created_at": rfc3339(created_at), "cmd": config.get("Cmd"),
            "entrypoint": config.get("Entrypoint"), "env": env,
            "working_dir": config.get("WorkingDir"), "platform": described.get("platform"),
            "size_bytes": described.get("rootfs_size")}


# --- request bodies ----------------------------------------------------------------------------

# hypeman create fields Kindling cannot honour, and why (a 422 names the field).
UNSUPPORTED = {
    "gpu": "Kindling has no GPU passthrough",
    "devices": "Kindling has no PCI/GPU device passthrough",
    "credentials": "Kindling has no host-side credential brokering",
    "health_check": "Kindling has no workload health checks",
    "restart_policy": "Kindling has no restart supervision",
    "auto_standby": "Kindling has no automatic standby",
    "snapshot_policy": "Kindling's snapshots are not compressed",
    "hotplug_size": "Kindling has no memory hotplug",
    "disk_io_bps": "Kindling has no disk I/O limits",
    "ttl": "Kindling instances do not expire",
    "expires_at": "Kindling instances do not expire",
    "tags": "Kindling keeps no tags",
}


def typed(body: dict, field: str, kind, what: str):
    """body[field] if it is a `kind` (bool only for bool), or None if absent; 400 otherwise."""
    value = body.get(field)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool) != (kind is bool)):
        raise bad_request(f"{field}: expected {what}, got {value!r}")
    return value


def required_string(body: dict, field: str, what: str = "a non-empty string") -> str:
    """body[field], which must be a non-empty string (400 naming the field otherwise)."""
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise bad_request(f"{field}: required, {what}")
    return value


def _strings(body: dict, field: str) -> list[str] | None:
    value = typed(body, field, list, "a list of strings")
    if value is not None and not all(isinstance(v, str) for v in value):
        raise bad_request(f"{field}: expected a list of strings, got {value!r}")
    return value


def _network(body: dict) -> bool:
    network = typed(body, "network", dict, "an object") or {}
    for key in network:
        if key != "enabled":
            raise unsupported(f"network.{key}", "Kindling's network has no bandwidth limits "
                                                "or egress mediation")
    return bool(typed(network, "enabled", bool, "true or false"))


def _volume_spec(mount) -> str:
    if not isinstance(mount, dict) or not isinstance(mount.get("volume_id"), str) \
            or not isinstance(mount.get("mount_path"), str):
        raise bad_request(f"volumes: expected objects with volume_id and mount_path, got {mount!r}")
    if mount.get("overlay_size") is not None:
        raise unsupported("volumes.overlay_size", "Kindling's volume overlays take no size")
    mode = "overlay" if mount.get("overlay") else "ro" if mount.get("readonly") else "rw"
    return f"{mount['volume_id']}:{mount['mount_path']}:{mode}"


def _program(body: dict) -> dict:
    """cmd and entrypoint (lists, as docker's) as Kindling's command and entrypoint."""
    cmd, entrypoint = _strings(body, "cmd"), _strings(body, "entrypoint")
    kwargs: dict = {"command": tuple(cmd or ())}
    if entrypoint is not None:
        kwargs["entrypoint"] = entrypoint[0] if entrypoint else ""
        kwargs["command"] = tuple(entrypoint[1:]) + tuple(cmd or ())
    return kwargs


def create_kwargs(body: dict) -> dict:
    """hypeman's create request as the keywords of `Kindling.create`."""
    refuse_unsupported(body, UNSUPPORTED)
    known = {"image", "name", "cmd", "entrypoint", "env", "size", "vcpus", "overlay_size",
             "skip_kernel_headers", "skip_guest_agent", "network", "volumes", "hypervisor",
             "platform"}
    if unknown := sorted(set(body) - known - set(UNSUPPORTED)):
        raise bad_request(f"unknown field{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
    for field in ("image", "name"):
        required_string(body, field)
    if body.get("hypervisor") not in (None, "qemu"):
        raise unsupported("hypervisor", "Kindling runs QEMU only")
    if body.get("platform") not in (None, "linux/amd64"):
        raise unsupported("platform", "Kindling runs linux/amd64 guests only")
    kwargs = {**image_option(body["image"]), "name": body["name"], **_program(body)}
    if (env := typed(body, "env", dict, "an object of NAME to value")) is not None:
        kwargs["env"] = env
    for field, option in (("size", "memory"), ("overlay_size", "overlay_size")):
        if (value := typed(body, field, str, "a size such as 1GB")) is not None:
            kwargs[option] = value         # host_shim/sizes.py reads 1GB, 1G and 1GiB alike
    if (vcpus := typed(body, "vcpus", int, "a whole number")) is not None:
        kwargs["cpus"] = vcpus
    if typed(body, "skip_kernel_headers", bool, "true or false"):
        kwargs["headers"] = False
    if typed(body, "skip_guest_agent", bool, "true or false"):
        kwargs["agent"] = "none"
    kwargs["net"] = _network(body)
    mounts = typed(body, "volumes", list, "a list of volume mounts") or []
    kwargs["volumes"] = [_volume_spec(m) for m in mounts]
    return kwargs


def too_large() -> ApiError:
    return ApiError(413, "payload_too_large", f"the request body is larger than {MAX_BODY} bytes")


async def read_body(request: Request) -> bytes:
    """The body, at most MAX_BODY bytes (413 past that, read no further).  Starlette's own
    limit answers a declared oversize length in plain text, not hypeman's JSON."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY:
        raise too_large()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise too_large()
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request) -> dict:
    """The request's JSON object ({} for no body); 400 names what is wrong with it."""
    body = await read_body(request)
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"malformed JSON in the request body: {e}") from None
    if not isinstance(value, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(value).__name__}")
    return value
