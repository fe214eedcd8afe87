"""hypeman's own Python SDK (PyPI `hypeman`) drives a real `kindling serve` (one TCG guest,
plus its fork): create from an image in a local registry with env and cmd, wait for
Running, logs, stat, standby, fork, restore (the source and the fork), stop, delete;
volumes and images listed.  Kindling's extras on the same guest: exec over a WebSocket,
copy in and out, the boot timeline.  Every response is parsed by the SDK, then validated by its
own pydantic models (the SDK itself only constructs them, without checking)."""

import io
import json
import tarfile
import threading
import time

import hypeman
import pytest
from hypeman.types import Image, Instance, PathInfo, Volume, WaitForStateResponse
from hypeman.types.health_check_response import HealthCheckResponse

from tests.oci_fixtures import app_layout, app_ref, oci_work, registry  # noqa: F401
from tests.serve_fixture import KindlingServer, exec_ws
from tests.vm import eventually, private_home, qemu_pids_using

pytestmark = pytest.mark.vm

TOKEN = "sdk-test-token"
PROGRAM = "/app/show from-api; echo EXTRA=$EXTRA; exec sleep 3600"


def valid(model, obj):
    """`obj` (what the SDK returned) checked against its pydantic model `model`."""
    assert isinstance(obj, model), type(obj)
    return model.model_validate(obj.model_dump(mode="json", exclude_unset=True))


def log_lines(client, ref) -> list[str]:
    return [line.rstrip("\r") for line in client.instances.logs(ref)]


def test_hypemans_sdk_drives_kindling_serve(app_ref):
    host = app_ref.split("/")[0]
    with private_home("ksdk") as home:
        (home / "registries.json").write_text(json.dumps({"insecure": [host]}))
        with KindlingServer(home, token=TOKEN) as server:
            client = hypeman.Hypeman(api_key=TOKEN, base_url=server.base_url, max_retries=0,
                                     timeout=900)
            try:
                drive(client, server, app_ref)
            finally:
                client.close()
        assert qemu_pids_using(home) == []


def drive(client, server, app_ref: str) -> None:
    assert valid(HealthCheckResponse, client.health.check()).status == "ok"
    vm = valid(Instance, client.instances.create(
        image=app_ref, name="api-vm", entrypoint=["/bin/sh", "-c"], cmd=[PROGRAM],
        env={"EXTRA": "from-the-api"}, skip_kernel_headers=True))
    assert vm.state in ("Initializing", "Running") and vm.image == app_ref
    assert vm.env == {"EXTRA": "from-the-api"}
    waited = valid(WaitForStateResponse, client.instances.wait(vm.id, state="Running",
                                                               api_timeout="300s"))
    assert (waited.state, waited.timed_out) == ("Running", False)
    eventually(lambda: "EXTRA=from-the-api" in log_lines(client, vm.id), "the program's output",
               timeout=120)
    lines = log_lines(client, vm.id)
    assert {"ARGS=from-api", "GREETING=hello-oci", "PWD=/work/dir", "ID=1000:1000"} <= set(lines)
    shown = valid(PathInfo, client.instances.stat(vm.id, path="/app/show"))
    assert (shown.exists, shown.is_file, shown.mode, shown.is_dir) == (True, True, 0o755, False)
    assert valid(PathInfo, client.instances.stat(vm.id, path="/doomed")).exists is False
    check_waits_run_at_once(client, vm.id)
    check_extras(client, server, vm.id)

    assert valid(Instance, client.instances.standby(vm.id)).state == "Standby"
    fork = valid(Instance, client.instances.fork(vm.id, name="api-fork"))
    assert (fork.name, fork.state) == ("api-fork", "Standby") and fork.id != vm.id
    assert valid(Instance, client.instances.restore(vm.id)).state == "Running"
    assert valid(Instance, client.instances.restore(fork.id)).state == "Running"
    forked = valid(PathInfo, client.instances.stat(fork.id, path="/app/show"))
    assert (forked.exists, forked.is_file) == (True, True)
    listed = client.instances.list()
    assert sorted((valid(Instance, i).name, i.state) for i in listed) == \
        [("api-fork", "Running"), ("api-vm", "Running")]
    check_volumes_and_images(client, app_ref)

    for ref in (fork.id, vm.id):
        assert valid(Instance, client.instances.stop(ref)).state == "Stopped"
        assert client.instances.delete(ref) is None
        with pytest.raises(hypeman.NotFoundError):
            client.instances.get(ref)
    assert client.instances.list() == []
    assert client.images.delete(app_ref) is None     # the shared cache's store: leave no image


def check_volumes_and_images(client, app_ref: str) -> None:
    made = valid(Volume, client.volumes.create(name="api-data", size_gb=1))
    assert (made.id, made.size_gb, made.attachments) == ("api-data", 1, [])
    assert [valid(Volume, v).id for v in client.volumes.list()] == ["api-data"]
    assert client.volumes.delete("api-data") is None
    assert client.volumes.list() == []
    image = valid(Image, client.images.get(app_ref))
    assert (image.name, image.status, image.working_dir) == (app_ref, "ready", "/work/dir")
    assert image.env == {"GREETING": "hello-oci"} and image.cmd == ["from-cmd"]
    assert app_ref in [valid(Image, i).name for i in client.images.list()]


def check_waits_run_at_once(client, ref: str, n: int = 3, seconds: int = 10) -> None:
    """n waits for Stopped, each timing out after `seconds` (the VM keeps running: a
    client's deadline stops nothing), sent at once: together they take about `seconds`,
    not n times that -- one long request blocks no other -- and a list sent meanwhile
    is answered."""
    results = []
    waiters = [threading.Thread(target=lambda: results.append(client.instances.wait(
        ref, state="Stopped", api_timeout=f"{seconds}s"))) for _ in range(n)]
    started = time.monotonic()
    for waiter in waiters:
        waiter.start()
    assert [i.name for i in client.instances.list()] == ["api-vm"]
    for waiter in waiters:
        waiter.join(timeout=120)
    took = time.monotonic() - started
    assert [(valid(WaitForStateResponse, r).state, r.timed_out) for r in results] == \
        [("Running", True)] * n
    assert seconds <= took < (n - 1) * seconds, f"{n} waits of {seconds} s took {took:.1f} s"


def check_extras(client, server, ref: str) -> None:
    """exec streamed over the WebSocket, a file copied in (seen by the SDK's stat) and out,
    a directory out as a tar, the boot timeline."""
    stdout, stderr, final = exec_ws(server.base_url, ref, {
        "argv": ["sh", "-c", "echo out; cat; echo err >&2; exit 3"], "stdin": "in\n"}, TOKEN)
    assert (stdout, stderr, final) == (b"out\nin\n", b"err\n", {"exit_code": 3, "error": None})
    base = f"/kindling/instances/{ref}"
    status, _, copied = server.request("PUT", f"{base}/files?path=/tmp/up.txt&mode=0640",
                                       b"uploaded\n", token=TOKEN)
    assert status == 200 and copied["bytes"] == 9, copied
    up = valid(PathInfo, client.instances.stat(ref, path="/tmp/up.txt"))
    assert (up.is_file, up.size, up.mode) == (True, 9, 0o640)
    assert server.request("GET", f"{base}/files?path=/tmp/up.txt", token=TOKEN)[::2] == \
        (200, b"uploaded\n")
    status, headers, tree = server.request("GET", f"{base}/files?path=/app", token=TOKEN)
    assert status == 200 and headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(tree)) as tar:
        assert tar.extractfile("app/show").read().startswith(b"#!/bin/sh")
    status, _, timeline = server.request("GET", f"{base}/timeline", token=TOKEN)
    assert status == 200 and timeline["time_to_running"] > 0, timeline
