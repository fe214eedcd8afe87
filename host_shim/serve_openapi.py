"""The OpenAPI document of `kindling serve`, served at /openapi.json and committed as
docs/openapi.json (a test keeps the two equal; regenerate with
`python -m host_shim.serve_openapi > docs/openapi.json`).

Written as data here: Starlette's schema generator wants YAML in every docstring, and
the document is hypeman's subset plus what Kindling refuses, which only this module says
in one place.  The field names are hypeman's (host_shim/serve_wire.py makes them).
"""

from __future__ import annotations

import json
import sys

from .serve_extras import COPY_TIMEOUT
from .serve_wire import UNSUPPORTED

STATES = ["Created", "Initializing", "Running", "Paused", "Shutdown", "Stopped", "Standby",
          "Unknown"]


def _obj(required: list[str], **props) -> dict:
    return {"type": "object", "required": required, "properties": props}


S, I, B = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
T = {"type": "string", "format": "date-time"}
STRS = {"type": "array", "items": S}
MAP = {"type": "object", "additionalProperties": S}
NULL_S = {"type": ["string", "null"]}

SCHEMAS = {
    "Error": _obj(["code", "message"], code=S, message=S),
    "VolumeMount": _obj(["volume_id", "mount_path"], volume_id=S, mount_path=S, readonly=B,
                        overlay=B),
    "Instance": _obj(["id", "name", "state", "created_at", "image"], id=S, name=S,
                     state={"type": "string", "enum": STATES}, created_at=T, image=S,
                     state_error=NULL_S, env=MAP, exit_code={"type": ["integer", "null"]},
                     exit_message=NULL_S, has_snapshot=B, hypervisor={"const": "qemu"},
                     size=NULL_S, vcpus=I, overlay_size=NULL_S,
                     network=_obj([], enabled=B),
                     volumes={"type": "array", "items": {"$ref": "#/components/schemas/VolumeMount"}}),
    "CreateInstanceRequest": {**_obj(["image", "name"], image=S, name=S, cmd=STRS, entrypoint=STRS,
                                     env=MAP, size=S, vcpus=I, overlay_size=S,
                                     skip_kernel_headers=B, skip_guest_agent=B,
                                     network=_obj([], enabled=B),
                                     volumes={"type": "array",
                                              "items": {"$ref": "#/components/schemas/VolumeMount"}},
                                     hypervisor={"const": "qemu"},
                                     platform={"const": "linux/amd64"}),
                              "description": "Refused with 422 naming the field: " + "; ".join(
                                  f"{k} ({why})" for k, why in UNSUPPORTED.items())},
    "ForkRequest": _obj(["name"], name=S, from_running=B,
                        target_state={"type": "string", "enum": ["Stopped", "Standby", "Running"]}),
    "WaitForStateResponse": _obj(["state", "timed_out"], state={"type": "string", "enum": STATES},
                                 timed_out=B, state_error=NULL_S),
    "PathInfo": _obj(["exists"], exists=B, is_dir=B, is_file=B, is_symlink=B,
                     link_target=NULL_S, mode=I, size=I),
    "VolumeAttachment": _obj(["instance_id", "mount_path", "readonly"], instance_id=S,
                             mount_path=S, readonly=B),
    "Volume": _obj(["id", "name", "size_gb", "created_at"], id=S, name=S, size_gb=I, created_at=T,
                   attachments={"type": "array",
                                "items": {"$ref": "#/components/schemas/VolumeAttachment"}}),
    "CreateVolumeRequest": _obj(["name", "size_gb"], name=S, size_gb=I),
    "Image": _obj(["name", "digest", "status", "created_at"], name=S, digest=S,
                  status={"const": "ready"}, created_at=T, cmd=STRS, entrypoint=STRS, env=MAP,
                  working_dir=NULL_S, platform=NULL_S, size_bytes=I),
    "CreateImageRequest": _obj(["name"], name=S, platform=S),
    "Health": _obj(["status"], status={"const": "ok"}),
}

ERRORS = {"400": "malformed JSON or a bad value", "401": "no token, or a bad or expired one",
          "404": "no such instance, volume or image", "409": "refused by the current state",
          "413": "request body over 1 MiB", "422": "a field Kindling cannot honour"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _op(summary: str, status: str, schema: dict | None, *, body: str | None = None,
        query: tuple = (), stream: bool = False) -> dict:
    content = ({"text/event-stream": {"schema": S}} if stream
               else {"application/json": {"schema": schema}} if schema else None)
    responses = {status: {"description": summary, **({"content": content} if content else {})}}
    responses.update({code: {"description": why, "content": {"application/json": {
        "schema": _ref("Error")}}} for code, why in ERRORS.items()})
    op = {"summary": summary, "responses": responses}
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    if query:
        op["parameters"] = [{"name": n, "in": "query", "schema": s} for n, s in query]
    return op


def _list(name: str) -> dict:
    return {"type": "array", "items": _ref(name)}


def paths() -> dict:
    inst, state = "/instances/{id}", {"type": "string", "enum": STATES}
    action = {verb: {"post": _op(f"{verb} the instance", "200", _ref("Instance"))}
              for verb in ("start", "stop", "standby", "restore")}
    return {
        "/health": {"get": {**_op("the server is up", "200", _ref("Health")), "security": []}},
        "/instances": {"get": _op("list instances", "200", _list("Instance"), query=(("state", state),)),
                       "post": _op("create and boot an instance", "201", _ref("Instance"),
                                   body="CreateInstanceRequest")},
        inst: {"get": _op("the instance", "200", _ref("Instance")),
               "delete": _op("stop and delete the instance", "204", None)},
        **{f"{inst}/{verb}": op for verb, op in action.items()},
        f"{inst}/fork": {"post": _op("fork the instance", "201", _ref("Instance"), body="ForkRequest")},
        f"{inst}/wait": {"get": _op("wait for Running or Stopped", "200", _ref("WaitForStateResponse"),
                                    query=(("state", state), ("timeout", S)))},
        f"{inst}/logs": {"get": _op("log lines as server-sent events (data: a JSON string)", "200",
                                    None, stream=True, query=(("source", {"enum": ["app", "vmm"]}),
                                                              ("tail", I), ("follow", B)))},
        f"{inst}/stat": {"get": _op("a path in the guest", "200", _ref("PathInfo"),
                                    query=(("path", S), ("follow_links", B)))},
        "/volumes": {"get": _op("list volumes", "200", _list("Volume")),
                     "post": _op("create a volume", "201", _ref("Volume"), body="CreateVolumeRequest")},
        "/volumes/{id}": {"get": _op("the volume", "200", _ref("Volume")),
                          "delete": _op("delete the volume", "204", None)},
        "/images": {"get": _op("list images", "200", _list("Image")),
                    "post": _op("pull an image", "201", _ref("Image"), body="CreateImageRequest")},
        "/images/{name}": {"get": _op("the image", "200", _ref("Image")),
                           "delete": _op("remove the image", "204", None)},
    }


def extras() -> dict:
    """Kindling's own paths (host_shim/serve_extras.py); exec is a WebSocket, outside
    OpenAPI: see the info description."""
    base, path = "/kindling/instances/{id}", ("path", S)
    raw = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    put = _op("copy a file into the guest as path", "200", _obj(
        ["entries", "bytes"], entries=I, bytes=I, skipped=I), query=(path, ("mode", S)))
    put["requestBody"] = {"required": True, "content": raw}
    get = _op("a guest file's bytes, or a tar of a directory", "200", None, query=(path,))
    get["responses"]["200"]["content"] = {**raw, "application/x-tar": raw[
        "application/octet-stream"]}
    timeline = _obj(["id", "name", "boot", "timeline"], id=S, name=S, boot=I,
                    time_to_running={"type": ["number", "null"]}, timeline={"type": "object"})
    svg = _op("the boot timeline as an SVG chart", "200", None)
    svg["responses"]["200"]["content"] = {"image/svg+xml": {"schema": S}}
    for op in (put, get):
        op["responses"]["504"] = {"description": f"the copy not done in {COPY_TIMEOUT:g} s",
                                  "content": {"application/json": {"schema": _ref("Error")}}}
    return {f"{base}/timeline": {"get": _op("the boot timeline", "200", timeline)},
            f"{base}/timeline.svg": {"get": svg},
            f"{base}/files": {"put": put, "get": get}}


EXEC = ("Kindling's exec: a WebSocket at /kindling/instances/{id}/exec (bearer token on the "
        "handshake).  First message, JSON: {argv, env, workdir, user, tty, stdin, timeout}; "
        "then binary messages, the first byte the stream (1 stdout, 2 stderr); last, a text "
        "message {exit_code, error}.")


def document() -> dict:
    return {"openapi": "3.1.0",
            "info": {"title": "Kindling API (hypeman's subset)", "version": "0.1.0",
                     "description": "`kindling serve`: hypeman's paths and shapes over Kindling "
                                    "(README: REST API).  " + EXEC},
            "servers": [{"url": "http://localhost:4973"}],
            "security": [{"bearerAuth": []}],
            "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                                              "bearerFormat": "token or HS256 JWT"}},
                           "schemas": SCHEMAS},
            "paths": paths() | extras()}


def text() -> str:
    """The document as committed in docs/openapi.json."""
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(text())
