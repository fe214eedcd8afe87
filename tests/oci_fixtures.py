"""Test images built from local files with real tools, and a real registry.

- `make_app_image(layout_dir, busybox_tree)`: the 3-layer image of issue 13, made with
  umoci (init/new, raw add-layer, config): layer 1 is the busybox tree plus
  /etc/passwd, /doomed and /data/{old1,old2}; layer 2 deletes /doomed (whiteout) and
  replaces /data (opaque whiteout, new /data/new); layer 3 adds /app/show, a script
  printing what the VM test checks, /app/owned (1000:1000, 0640), a hard link and a
  symlink to show.  Config: Entrypoint, Cmd, Env, WorkingDir and the
  non-root User 1000:1000.
- `Registry`: `docker-registry serve CONFIG.yml` on 127.0.0.1, a free port, a temp
  storage dir; `push(layout, tag, name)` pushes with skopeo.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from image_build import busybox, cache
from image_build.run import run

TIMEOUT = 120
APP_CONFIG = {"entrypoint": ["/bin/sh", "/app/show"], "cmd": ["from-cmd"],
              "env": {"GREETING": "hello-oci"}, "workdir": "/work/dir", "user": "1000:1000"}
SHOW = b"""#!/bin/sh
echo "ARGS=$*"
echo "GREETING=$GREETING"
echo "PWD=$(pwd)"
echo "ID=$(id -u):$(id -g)"
for f in /doomed /data/old1 /data/old2 /data/new; do
  if [ -e "$f" ]; then echo "HAS $f"; else echo "NO $f"; fi
done
"""


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, mode: int = 0o644,
         kind: bytes = tarfile.REGTYPE, link: str = "", owner: int = 0) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.uid = info.gid = owner
    info.mode = 0o755 if kind == tarfile.DIRTYPE else mode
    info.mtime = 1_700_000_000
    info.size = len(data or b"")
    tar.addfile(info, io.BytesIO(data or b"") if data is not None else None)


def write_layer(path: Path, entries, base: Path | None = None, links=()) -> Path:
    """A layer tarball (plain: umoci raw add-layer compresses it): the tree `base` (if
    given), then `entries` (name, data|None for a directory, mode), then `links`
    (name, kind, target)."""
    with tarfile.open(path, "w") as tar:   # umoci gzips it
        if base is not None:
            for child in sorted(base.iterdir()):
                tar.add(child, arcname=child.name)
        for name, data, mode in entries:
            _add(tar, name, data, mode, tarfile.DIRTYPE if data is None else tarfile.REGTYPE,
                 owner=1000 if name == "app/owned" else 0)
        for name, kind, target in links:
            _add(tar, name, kind=kind, link=target, mode=0o777)
    return path


def umoci(*args, timeout: float = TIMEOUT):
    return run(["umoci", *args], timeout=timeout)


def make_image(layout: Path, tag: str, layer_files, config=APP_CONFIG, arch: str = "amd64") -> Path:
    """An OCI layout holding `tag` made of the given layer tarballs, with `config`."""
    if not (layout / "oci-layout").exists():
        umoci("init", "--layout", layout)
    umoci("new", "--image", f"{layout}:{tag}")
    for layer in layer_files:
        umoci("raw", "add-layer", "--image", f"{layout}:{tag}", layer)
    argv = ["config", "--image", f"{layout}:{tag}", "--architecture", arch,
            "--config.workingdir", config["workdir"], "--config.user", config["user"]]
    for part in config["entrypoint"]:
        argv += ["--config.entrypoint", part]
    for part in config["cmd"]:
        argv += ["--config.cmd", part]
    for key, value in config["env"].items():
        argv += ["--config.env", f"{key}={value}"]
    umoci(*argv)
    return layout


def make_index(layout: Path, tag: str, tags: list[str]) -> Path:
    """An image index `tag` in `layout` over the images `tags`, each with its platform."""
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text())
    by_tag = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]}
    manifests = []
    for name in tags:
        desc = {k: by_tag[name][k] for k in ("mediaType", "digest", "size")}
        config_digest = _blob(layout, desc["digest"])["config"]["digest"]
        config = _blob(layout, config_digest)
        manifests.append(dict(desc, platform={"os": config["os"],
                                              "architecture": config["architecture"]}))
    data = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": manifests}).encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    index["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json",
                               "digest": f"sha256:{digest}", "size": len(data),
                               "annotations": {"org.opencontainers.image.ref.name": tag}})
    index_path.write_text(json.dumps(index))
    return layout


def _blob(layout: Path, digest: str) -> dict:
    return json.loads((layout / "blobs/sha256" / digest.split(":", 1)[1]).read_text())


def app_layers(work: Path, busybox_tree: Path) -> list[Path]:
    """The three layers of the test image."""
    passwd = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
    one = write_layer(work / "l1.tar", [
        ("etc/passwd", passwd, 0o644), ("etc/group", b"root:x:0:\napp:x:1000:\n", 0o644),
        ("doomed", b"delete me\n", 0o644), ("data", None, 0),
        ("data/old1", b"1\n", 0o644), ("data/old2", b"2\n", 0o644)], base=busybox_tree)
    two = write_layer(work / "l2.tar", [
        (".wh.doomed", b"", 0o644), ("data", None, 0), ("data/.wh..wh..opq", b"", 0o644),
        ("data/new", b"new\n", 0o644)])
    three = write_layer(work / "l3.tar", [("app", None, 0), ("app/show", SHOW, 0o755),
                                          ("app/owned", b"mine\n", 0o640)],
                        links=[("app/hard", tarfile.LNKTYPE, "app/show"),
                               ("app/sym", tarfile.SYMTYPE, "show")])
    return [one, two, three]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """A real distribution registry (Debian's docker-registry) on 127.0.0.1."""

    def __init__(self, work: Path, *, tls=None, auth: dict | None = None, push_args=()):
        """`tls`: a registry_auth.PKI (serve https with its server certificate); `auth`:
        the config's `auth:` section; `push_args`: skopeo's --dest-* flags to push."""
        work.mkdir(parents=True, exist_ok=True)
        self.storage = work / "storage"
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log = work / "registry.log"
        self.push_args = list(push_args) or ["--dest-tls-verify=false"]
        http = {"addr": self.host}
        if tls is not None:
            http["tls"] = {"certificate": str(tls.server_cert), "key": str(tls.server_key)}
        config = work / "registry.yml"     # JSON is YAML
        config.write_text(json.dumps({"version": 0.1, "log": {"level": "info"}, "http": http,
                                      "storage": {"filesystem": {"rootdirectory": str(self.storage)}},
                                      **({"auth": auth} if auth else {})}))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(["docker-registry", "serve", str(config)],
                                         stdout=log, stderr=subprocess.STDOUT)
        self._wait_listening()

    def _wait_listening(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)   # polling for the listening socket, not a fixed wait
        raise RuntimeError(f"docker-registry did not listen on {self.host} in {timeout}s")

    def push(self, source: str, name: str, *, all_images: bool = False) -> str:
        """skopeo copy SOURCE docker://HOST/NAME (an index with its images: `all_images`);
        returns the reference."""
        ref = f"{self.host}/{name}"
        run(["skopeo", "copy", "--quiet", *(["--all"] if all_images else []), *self.push_args,
             source, f"docker://{ref}"], timeout=TIMEOUT)
        return ref

    def blob_gets(self, digests=None) -> int:
        """How many blob downloads (GET .../blobs/sha256:...) the registry has served
        (of `digests` only, if given), from its access log."""
        return sum(1 for line in self.log.read_text(errors="replace").splitlines()
                   if '"GET /v2/' in line and "/blobs/sha256:" in line
                   and (digests is None or any(d in line for d in digests)))

    def blob_data(self, digest: str) -> Path:
        hexpart = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


# --- pytest fixtures (import them into a test module to use them) -----------------------------

@pytest.fixture(scope="module")
def oci_work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("oci")


@pytest.fixture(scope="module")
def app_layout(oci_work) -> Path:
    """The 3-layer test image as an OCI layout (tag `1`) on the busybox tree."""
    _, binary = busybox.fetch(cache.default_cache_dir())
    tree = oci_work / "busybox"
    tree.mkdir()
    busybox.stage(tree, binary)
    return make_image(oci_work / "layout", "1", app_layers(oci_work, tree))


@pytest.fixture(scope="module")
def registry(oci_work):
    reg = Registry(oci_work)
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def app_ref(registry, app_layout) -> str:
    """The test image pushed to the registry as test/app:1."""
    return registry.push(f"oci:{app_layout}:1", "test/app:1")
