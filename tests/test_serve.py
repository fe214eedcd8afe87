"""`kindling serve` without a VM, over raw HTTP: auth (no token, a wrong one, an expired or
unsigned JWT, a good one of each kind), unknown ids, a transition the state refuses,
malformed JSON, an oversized body, fields Kindling cannot honour -- each the right status
and hypeman's error body naming the problem, and the server still serving afterwards.
Also the listen rule without a token, and the pure pieces (durations, create's fields)."""

import json
import subprocess
import sys
import time

import httpx
import jwt
import pytest
import trio

from host_shim import agent_ops, metadata, serve_app, serve_extras, serve_wire
from host_shim.api import Kindling
from host_shim.instance import Instance
from host_shim.metadata import Metadata
from host_shim.serve_auth import Auth
from host_shim.serve_wire import ApiError
from host_shim.state import State
from tests.serve_fixture import JWT_SECRET, KindlingServer, exec_ws, post_oversized
from tests.vm import ROOT

TOKEN = "plain-token-for-tests"


def stopped_instance(home, name="idle"):
    """A Stopped instance (metadata only: no QEMU, nothing to boot)."""
    instance = Instance.create(home)
    now = time.time_ns()
    meta = Metadata(id=instance.id, name=name, created_at=now, command=["sh"],
                    config={"init_mode": "exec"}, agent_skipped=True, argv=["qemu-system-x86_64"],
                    accel="tcg", log_max_bytes=1 << 20, log_keep=3, boot=1,
                    boot_requested_at=now, logs_final=True)
    meta.record_state(State.STOPPED)
    metadata.save(instance, meta)
    return instance


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("kserve")
    stopped_instance(home)
    with KindlingServer(home, token=TOKEN, jwt_secret=JWT_SECRET) as s:
        yield s


def token(exp_in: float, secret: str = JWT_SECRET) -> str:
    return jwt.encode({"sub": "tests", "exp": int(time.time() + exp_in)}, secret, algorithm="HS256")


def assert_error(response, status: int, code: str, *words: str):
    got, headers, body = response
    assert got == status, body
    assert body["code"] == code, body
    for word in words:
        assert word in body["message"], body
    assert headers.get("x-should-retry") == "false"


def test_health_needs_no_token(server):
    assert server.request("GET", "/health")[::2] == (200, {"status": "ok"})


@pytest.mark.parametrize("sent, why", [
    (None, "no token"),
    ("wrong-token", "invalid token"),
    ("expired-jwt", "expired"),
    ("jwt-other-secret", "invalid token"),
    ("jwt-without-exp", "exp"),
])
def test_requests_without_a_valid_token_get_401(server, sent, why):
    tokens = {"expired-jwt": token(-60), "jwt-other-secret": token(600, "another-secret-" * 3),
              "jwt-without-exp": jwt.encode({"sub": "x"}, JWT_SECRET, algorithm="HS256")}
    response = server.request("GET", "/instances", token=tokens.get(sent, sent))
    assert_error(response, 401, "unauthorized", why)
    assert response[1].get("www-authenticate") == "Bearer"


@pytest.mark.parametrize("kind", ["plain", "jwt"])
def test_a_valid_token_of_either_kind_is_accepted(server, kind):
    status, _, body = server.request("GET", "/instances",
                                     token=TOKEN if kind == "plain" else token(600))
    assert status == 200
    assert [(i["name"], i["state"]) for i in body] == [("idle", "Stopped")]


def test_an_instance_has_hypemans_fields(server):
    status, _, body = server.request("GET", "/instances/idle", token=TOKEN)
    assert status == 200
    assert body["name"] == "idle" and body["state"] == "Stopped" and body["hypervisor"] == "qemu"
    assert body["created_at"].endswith("Z") and body["image"] == "kindling/busybox"


def test_list_filters_by_state(server):
    assert server.request("GET", "/instances?state=Running", token=TOKEN)[2] == []


@pytest.mark.parametrize("method, path", [
    ("GET", "/instances/no-such-vm"), ("DELETE", "/instances/no-such-vm"),
    ("POST", "/instances/no-such-vm/stop"), ("GET", "/instances/no-such-vm/wait?state=Running"),
    ("GET", "/instances/no-such-vm/logs"), ("GET", "/instances/no-such-vm/logs?follow=true"),
])
def test_an_unknown_id_is_404(server, method, path):
    assert_error(server.request(method, path, token=TOKEN), 404, "not_found",
                 "no such instance: no-such-vm")


@pytest.mark.parametrize("operation, needs", [("restore", "Standby"),
                                              ("standby", "Running or Paused")])
def test_a_transition_the_state_refuses_is_409(server, operation, needs):
    response = server.request("POST", f"/instances/idle/{operation}", token=TOKEN)
    assert_error(response, 409, "conflict", "it is Stopped", needs)


def test_fork_to_standby_of_a_stopped_instance_is_409(server):
    response = server.request("POST", "/instances/idle/fork", token=TOKEN,
                              body={"name": "copy", "target_state": "Standby"})
    assert_error(response, 409, "conflict", "no memory to fork")


def test_malformed_json_is_400_and_the_server_stays_up(server):
    response = server.request("POST", "/instances", b'{"image": "x", "name":', token=TOKEN)
    assert_error(response, 400, "bad_request", "malformed JSON")
    assert_error(server.request("POST", "/instances", b"[1, 2]", token=TOKEN), 400,
                 "bad_request", "must be a JSON object")
    assert server.request("GET", "/health")[0] == 200


def test_an_oversized_body_is_413_and_the_server_stays_up(server):
    body = b'{"image": "' + b"x" * (serve_app.MAX_BODY + 10) + b'"}'
    status, answer = post_oversized(server.port, "/instances", body, TOKEN)
    assert (status, answer["code"]) == (413, "payload_too_large"), answer
    assert str(serve_app.MAX_BODY) in answer["message"]
    assert server.request("GET", "/instances", token=TOKEN)[0] == 200


@pytest.mark.parametrize("field, value", [("gpu", {"profile": "L40S-1Q"}), ("devices", ["gpu0"]),
                                          ("credentials", {"KEY": {}}), ("tags", {"a": "b"})])
def test_fields_kindling_cannot_honour_are_422_naming_them(server, field, value):
    response = server.request("POST", "/instances", token=TOKEN,
                              body={"image": "x", "name": "n", field: value})
    assert_error(response, 422, "unsupported_field", f"{field}:")


def test_a_wait_for_a_state_kindling_cannot_wait_for_names_it(server):
    response = server.request("GET", "/instances/idle/wait?state=Paused&timeout=1s", token=TOKEN)
    assert_error(response, 422, "unsupported_field", "state:", "Running or Stopped")


def test_a_wait_for_the_state_it_is_in_returns_at_once(server):
    status, _, body = server.request("GET", "/instances/idle/wait?state=Stopped", token=TOKEN)
    assert status == 200 and body == {"state": "Stopped", "timed_out": False, "state_error": None}


def test_without_a_token_it_refuses_a_non_loopback_address(tmp_path):
    r = subprocess.run([sys.executable, "-m", "host_shim.cli", "serve", "--listen", "0.0.0.0:4973"],
                       cwd=ROOT, env={"KINDLING_HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
                                      "PYTHONPATH": ":".join(sys.path)},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 125
    assert "refusing to listen on 0.0.0.0 without a token" in r.stderr


# --- the pure pieces ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("30s", 30), ("2m", 120), ("1m30s", 90),
                                           ("500ms", 0.5), ("1h", 3600)])
def test_go_durations(text, seconds):
    assert serve_app.go_duration("timeout", text, 60) == seconds


@pytest.mark.parametrize("text", ["30", "s", "1x", "-1s", "0s"])
def test_bad_go_durations_name_the_field(text):
    with pytest.raises(ApiError, match="timeout:"):
        serve_app.go_duration("timeout", text, 60)


def test_create_fields_become_create_options():
    kwargs = serve_wire.create_kwargs({
        "image": "reg/app:1", "name": "web", "cmd": ["a", "b"], "env": {"K": "v"},
        "size": "1GB", "vcpus": 2, "skip_kernel_headers": True, "skip_guest_agent": True,
        "network": {"enabled": True},
        "volumes": [{"volume_id": "data", "mount_path": "/data", "readonly": True}]})
    assert kwargs == {"image": "reg/app:1", "name": "web", "command": ("a", "b"),
                      "env": {"K": "v"}, "memory": "1GB", "cpus": 2, "headers": False,
                      "agent": "none", "net": True, "volumes": ["data:/data:ro"]}


def test_kindlings_base_systems_are_images_named_as_instances_show_them():
    assert serve_wire.create_kwargs({"image": "kindling/debian", "name": "n"})["base"] == "debian"
    assert serve_wire.image_of({"base": "debian"}) == "kindling/debian"
    assert serve_wire.create_kwargs({"image": "kindling/other", "name": "n"})["image"] == \
        "kindling/other"


def test_an_entrypoint_list_is_kindlings_entrypoint_and_its_arguments():
    kwargs = serve_wire.create_kwargs({"image": "i", "name": "n", "entrypoint": ["/bin/sh", "-c"],
                                       "cmd": ["echo hi"]})
    assert (kwargs["entrypoint"], kwargs["command"]) == ("/bin/sh", ("-c", "echo hi"))


@pytest.mark.parametrize("body, message", [
    ({"name": "n"}, "image: required"),
    ({"image": "i", "name": "n", "cmd": "echo"}, "cmd: expected a list of strings"),
    ({"image": "i", "name": "n", "vcpus": True}, "vcpus: expected a whole number"),
    ({"image": "i", "name": "n", "colour": "red"}, "unknown field: colour"),
    ({"image": "i", "name": "n", "network": {"egress": {}}}, "network.egress:"),
    ({"image": "i", "name": "n", "hypervisor": "firecracker"}, "hypervisor:"),
])
def test_bad_create_bodies_name_the_field(body, message):
    with pytest.raises(ApiError, match=message):
        serve_wire.create_kwargs(body)


# --- volumes and images ---------------------------------------------------------------------

def test_volumes_create_list_get_delete(server):
    status, _, made = server.request("POST", "/volumes", token=TOKEN,
                                     body={"name": "scratch", "size_gb": 1})
    assert status == 201, made
    assert (made["id"], made["name"], made["size_gb"], made["attachments"]) == \
        ("scratch", "scratch", 1, [])
    assert_error(server.request("POST", "/volumes", token=TOKEN,
                                body={"name": "scratch", "size_gb": 1}),
                 409, "conflict", "already exists")
    assert [v["id"] for v in server.request("GET", "/volumes", token=TOKEN)[2]] == ["scratch"]
    assert server.request("GET", "/volumes/scratch", token=TOKEN)[2] == made
    assert server.request("DELETE", "/volumes/scratch", token=TOKEN)[0] == 204
    assert_error(server.request("GET", "/volumes/scratch", token=TOKEN), 404, "not_found",
                 "no such volume: scratch")
    assert_error(server.request("DELETE", "/volumes/scratch", token=TOKEN), 404, "not_found",
                 "no such volume: scratch")


@pytest.mark.parametrize("body, message", [({"name": "v", "size_gb": 0}, "size_gb:"),
                                           ({"size_gb": 1}, "name: required")])
def test_bad_volume_bodies_are_400(server, body, message):
    assert_error(server.request("POST", "/volumes", token=TOKEN, body=body), 400, "bad_request",
                 message)


@pytest.mark.parametrize("path, body, message", [
    ("/instances/idle/fork", {"name": ""}, "name: required, a non-empty string"),
    ("/instances/idle/fork", {"name": "f", "from_running": 1}, "from_running: expected true or false"),
    ("/images", {"platform": "linux/amd64"}, "name: required, an image reference"),
    ("/images", {"name": "alpine", "platform": 64}, "platform: expected a string"),
])
def test_bad_fork_and_image_bodies_are_400_naming_the_field(server, path, body, message):
    assert_error(server.request("POST", path, token=TOKEN, body=body), 400, "bad_request", message)


@pytest.mark.parametrize("operation, field", [("start", "cmd"), ("start", "entrypoint"),
                                              ("standby", "compression")])
def test_lifecycle_fields_kindling_cannot_honour_are_422(server, operation, field):
    response = server.request("POST", f"/instances/idle/{operation}", token=TOKEN,
                              body={field: "x"})
    assert_error(response, 422, "unsupported_field", f"{field}:")


def test_the_served_openapi_document_is_the_committed_one(server):
    status, _, served = server.request("GET", "/openapi.json")
    assert status == 200
    assert served == json.loads((ROOT / "docs" / "openapi.json").read_text()), \
        "docs/openapi.json is stale: python -m host_shim.serve_openapi > docs/openapi.json"
    assert set(served["paths"]) >= {"/instances", "/instances/{id}/wait", "/volumes", "/images"}


# --- Kindling's extras: timeline, copy, exec ------------------------------------------------

def test_the_timeline_as_json_and_svg(server):
    status, _, body = server.request("GET", "/kindling/instances/idle/timeline", token=TOKEN)
    assert status == 200 and body["name"] == "idle" and "timeline" in body
    status, headers, svg = server.request("GET", "/kindling/instances/idle/timeline.svg",
                                          token=TOKEN)
    assert status == 200 and headers["content-type"] == "image/svg+xml"
    assert b"<svg" in svg and b"kindling boot of idle" in svg


@pytest.mark.parametrize("method, path", [("PUT", "/kindling/instances/idle/files?path=/x"),
                                          ("GET", "/kindling/instances/idle/files?path=/x")])
def test_copy_needs_a_running_guest(server, method, path):
    response = server.request(method, path, b"data" if method == "PUT" else None, token=TOKEN)
    assert_error(response, 409, "conflict", "instance idle is Stopped")


@pytest.mark.parametrize("query, message", [("path=rel", "path: expected an absolute path"),
                                            ("path=/x&mode=999", "mode: expected octal")])
def test_copy_arguments_are_checked(server, query, message):
    assert_error(server.request("PUT", f"/kindling/instances/idle/files?{query}", b"d",
                                token=TOKEN), 400, "bad_request", message)


def test_exec_over_a_websocket_needs_a_token(server):
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    with pytest.raises((ConnectionClosed, InvalidStatus)):
        exec_ws(server.base_url, "idle", {"argv": ["true"]}, token=None)


@pytest.mark.parametrize("request_, message", [
    ({"argv": ["true"]}, "instance idle is Stopped"),
    ({"argv": ["true"], "colour": 1}, "unknown field: colour"),
    ({"argv": "true"}, "argv: expected a list"),
])
def test_exec_errors_come_as_the_final_message(server, request_, message):
    stdout, stderr, final = exec_ws(server.base_url, "idle", request_, token=TOKEN)
    assert (stdout, stderr) == (b"", b"")
    assert message in final["error"], final


@pytest.mark.parametrize("method", ["PUT", "GET"])
async def test_a_copy_the_agent_does_not_finish_in_time_is_504(tmp_path, monkeypatch, method):
    """A fake agent copy that never finishes (a real one needs a booted guest, and no real
    agent hangs on cue), so the app runs in this process: the module's server is another
    process, out of the fake's reach."""
    async def never(*args, **kwargs):
        with trio.move_on_after(30):   # the test's own bound: without the server's, fail (500)
            await trio.sleep_forever()  # rather than hang (the worker thread cannot be cancelled)
        raise AssertionError("the server let the copy run for 30 s")

    monkeypatch.setattr(agent_ops, "copy_in", never)
    monkeypatch.setattr(agent_ops, "copy_out", never)
    monkeypatch.setattr(serve_extras, "COPY_TIMEOUT", 0.2)
    app = serve_app.make_app(Kindling(tmp_path), Auth(token=TOKEN))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://kindling") as client:
        response = await client.request(method, "/kindling/instances/idle/files?path=/x",
                                        content=b"data" if method == "PUT" else None,
                                        headers={"Authorization": f"Bearer {TOKEN}"})
    assert_error((response.status_code, dict(response.headers), response.json()), 504,
                 "timeout", "cp ", "idle:/x", "not done after 0.2 s")
