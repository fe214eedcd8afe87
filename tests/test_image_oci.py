"""OCI images, host only, against real components: Debian's docker-registry on 127.0.0.1,
images built from local files by umoci and pushed by skopeo (tests/oci_fixtures.py).
The VM side is tests/test_vm_oci.py."""

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from image_build.errors import BuildError
from image_build.oci import images, layers, skopeo
from image_build.oci.access import Access
from image_build.oci.store import Store
from image_build.run import run
from tests.oci_fixtures import (APP_CONFIG, app_layout, app_ref, make_image,  # noqa: F401
                                make_index, oci_work, registry, umoci, write_layer)

ROOT = Path(__file__).resolve().parent.parent


def extract(image: Path, dest: Path) -> Path:
    run(["fsck.erofs", f"--extract={dest}", "--preserve", image], timeout=120)
    return dest


def test_a_pull_applies_whiteouts_and_keeps_the_config(app_ref, tmp_path):
    image = images.pull(app_ref, tmp_path / "cache", access=Access(insecure=True))
    tree = extract(image.rootfs, tmp_path / "tree")
    assert not (tree / "doomed").exists()                         # whiteout
    assert sorted(os.listdir(tree / "data")) == ["new"]           # opaque whiteout
    show = (tree / "app/show").stat()
    assert show.st_mode & 0o777 == 0o755
    # a hard link: one inode in the erofs (fsck.erofs --extract writes two files)
    nids = {path: re.search(r"NID: (\d+) +Links: (\d+)", run(
        ["dump.erofs", f"--path={path}", image.rootfs], timeout=60).stdout).groups()
        for path in ("/app/show", "/app/hard")}
    assert nids["/app/show"] == nids["/app/hard"] and nids["/app/show"][1] == "2"
    assert os.readlink(tree / "app/sym") == "show"
    owned = (tree / "app/owned").stat()
    assert (owned.st_uid, owned.st_gid, owned.st_mode & 0o777) == (1000, 1000, 0o640)
    assert (tree / "bin/busybox").is_file()
    assert image.config == {"Entrypoint": APP_CONFIG["entrypoint"], "Cmd": APP_CONFIG["cmd"],
                            "Env": ["GREETING=hello-oci"], "WorkingDir": "/work/dir",
                            "User": "1000:1000"}
    assert image.info["rootfs_digest"].startswith("sha256:")
    assert [i.ref for i in images.list_images(tmp_path / "cache")] == [app_ref]


def test_a_second_pull_downloads_no_layer(app_ref, registry, tmp_path):
    """skopeo re-reads the config blob (a few hundred bytes) to compare; no layer again."""
    before = registry.blob_gets()
    first = images.pull(app_ref, tmp_path / "cache", access=Access(insecure=True))
    layer_digests = [layer["digest"] for layer in first.info["layers"]]
    assert registry.blob_gets() - before == 4                  # 3 layers and the config
    layer_gets = registry.blob_gets(layer_digests)
    second = images.pull(app_ref, tmp_path / "cache", access=Access(insecure=True))
    assert registry.blob_gets(layer_digests) == layer_gets     # no layer fetched again
    assert registry.blob_gets() - before == 5                  # the config, re-read
    assert second.digest == first.digest and second.rootfs == first.rootfs


def test_layout_and_docker_archive_give_the_same_rootfs(app_layout, app_ref, tmp_path):
    archive = tmp_path / "app.tar"
    run(["skopeo", "copy", "--quiet", f"oci:{app_layout}:1", f"docker-archive:{archive}:local/d:1"],
        timeout=120)
    cache_dir = tmp_path / "cache"
    from_layout = images.import_image(app_layout, cache_dir, name="local/l:1")
    from_archive = images.import_image(archive, cache_dir)         # named by its RepoTags
    assert from_archive.ref == "docker.io/local/d:1"
    assert from_archive.digest != from_layout.digest               # other manifest, same content
    assert from_archive.info["rootfs_digest"] == from_layout.info["rootfs_digest"]
    pulled = images.pull(app_ref, cache_dir, access=Access(insecure=True))
    assert pulled.info["rootfs_digest"] == from_layout.info["rootfs_digest"]


def test_zstd_layers_unpack_to_the_same_rootfs(app_layout, tmp_path):
    """umoci 0.4.7 refuses zstd layers; Kindling hands it plain tars instead
    (image_build/oci/zstd_layers.py) and the store keeps the image as it came."""
    zstd = tmp_path / "zstd-layout"
    run(["skopeo", "copy", "--quiet", "--dest-compress", "--dest-compress-format", "zstd",
         f"oci:{app_layout}:1", f"oci:{zstd}:1"], timeout=120)
    cache_dir = tmp_path / "cache"
    image = images.import_image(zstd, cache_dir, name="local/z:1")
    types = {layer["mediaType"] for layer in Store.at(cache_dir).read_blob(image.digest)["layers"]}
    assert types == {"application/vnd.oci.image.layer.v1.tar+zstd"}, types
    gzip = images.import_image(app_layout, cache_dir, name="local/g:1")
    assert image.info["rootfs_digest"] == gzip.info["rootfs_digest"]
    tree = extract(image.rootfs, tmp_path / "tree")
    assert not (tree / "doomed").exists() and sorted(os.listdir(tree / "data")) == ["new"]


def test_a_tampered_blob_is_refused_and_nothing_is_kept(app_layout, registry, oci_work, tmp_path):
    layer = write_layer(oci_work / "tamper.tar", [("tamper/me", b"original bytes\n", 0o644)])
    layout = make_image(oci_work / "tamper-layout", "1", [layer])
    ref = registry.push(f"oci:{layout}:1", "test/tampered:1")
    manifest = json.loads(run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                               f"docker://{ref}"], timeout=60).stdout)
    digest = manifest["layers"][-1]["digest"]
    data = registry.blob_data(digest)
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF                                    # same size, other content
    data.write_bytes(bytes(blob))
    with pytest.raises(BuildError, match=f"image {ref}: a blob's content does not match its digest"):
        images.pull(ref, tmp_path / "cache", access=Access(insecure=True))
    store = Store.at(tmp_path / "cache")
    assert ref not in store.tags()
    assert not store.blob(digest).exists()
    assert images.list_images(tmp_path / "cache") == []


def test_an_unknown_tag_names_the_reference(app_ref, tmp_path):
    ref = app_ref.replace(":1", ":no-such-tag")
    with pytest.raises(BuildError, match=f"image {ref}: no such image or tag"):
        images.pull(ref, tmp_path / "cache", access=Access(insecure=True))
    with pytest.raises(BuildError, match="no such image or tag"):
        images.pull(app_ref.replace("test/app", "test/nothing"), tmp_path / "cache", access=Access(insecure=True))


def test_a_registry_that_is_down_is_a_clear_error(tmp_path):
    from tests.oci_fixtures import free_port
    ref = f"127.0.0.1:{free_port()}/test/app:1"
    with pytest.raises(BuildError, match=f"image {ref}: the registry is down or not listening"):
        images.pull(ref, tmp_path / "cache", access=Access(insecure=True))


def test_a_registry_that_never_answers_fails_in_bounded_time(tmp_path, monkeypatch):
    import socket
    with socket.socket() as silent:                 # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        ref = f"127.0.0.1:{silent.getsockname()[1]}/test/app:1"
        monkeypatch.setattr(skopeo, "INSPECT_TIMEOUT", 3)
        start = time.monotonic()
        with pytest.raises(BuildError, match=f"image {ref}: the registry did not answer in time"):
            images.pull(ref, tmp_path / "cache", access=Access(insecure=True))
        assert time.monotonic() - start < 3 + skopeo.RUN_SLACK


def test_https_is_the_default(app_ref, tmp_path):
    with pytest.raises(BuildError, match="plain http: name it with --insecure-registry"):
        images.pull(app_ref, tmp_path / "cache")


def test_an_image_for_another_architecture_names_its_platforms(registry, oci_work, tmp_path):
    layer = write_layer(oci_work / "arm.tar", [("arm", b"x\n", 0o644)])
    layout = make_image(oci_work / "arm-layout", "1", [layer], arch="arm64")
    ref = registry.push(f"oci:{layout}:1", "test/arm:1")
    with pytest.raises(BuildError, match=f"image {ref}: it is for linux/arm64 only, not "
                                         "linux/amd64; the platforms it has: linux/arm64"):
        images.pull(ref, tmp_path / "cache", access=Access(insecure=True))
    assert ref not in Store.at(tmp_path / "cache").tags()


def test_a_pushed_index_of_other_platforms_names_them(registry, oci_work, tmp_path):
    layout = tmp_path / "multi-layout"
    for arch in ("arm64", "s390x"):
        layer = write_layer(tmp_path / f"{arch}.tar", [(arch, b"x\n", 0o644)])
        make_image(layout, arch, [layer], arch=arch)
    make_index(layout, "multi", ["arm64", "s390x"])
    ref = registry.push(f"oci:{layout}:multi", "test/multi:1", all_images=True)
    with pytest.raises(BuildError, match=f"image {ref}: no linux/amd64 image in it; the "
                                         "platforms it has: linux/arm64, linux/s390x"):
        images.pull(ref, tmp_path / "cache", access=Access(insecure=True))
    assert images.list_images(tmp_path / "cache") == []
    image = images.pull(ref, tmp_path / "cache", access=Access(insecure=True),
                        platform_text="linux/s390x")                      # --platform picks one
    assert image.info["platform"] == "linux/s390x"


def test_an_index_without_the_platform_names_those_it_has():
    from image_build.oci import platform
    index = {"mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"platform": {"os": "linux", "architecture": "s390x"}}]}
    assert platform.is_index(index)
    with pytest.raises(BuildError, match="no linux/amd64 image in it; the platforms it has: "
                                         "linux/arm64/v8, linux/s390x"):
        platform.check_index("r", index, ("linux", "amd64"))
    platform.check_index("r", index, ("linux", "s390x"))


@pytest.mark.parametrize("name, expected", [("../../evil", "contains '..'"),
                                            ("/abs-evil", "absolute path")])
def test_a_layer_escaping_the_root_is_refused(name, expected, oci_work, tmp_path):
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo(name)
        info.size = 2
        tar.addfile(info, io.BytesIO(b"x\n"))
    layout = make_image(tmp_path / "layout", "1", [bad])
    # umoci alone does not refuse it: it clamps the entry into the root
    umoci("unpack", "--image", f"{layout}:1", tmp_path / "bundle")
    assert (tmp_path / "bundle/rootfs" / name.lstrip("/").replace("../", "")).is_file()
    with pytest.raises(BuildError, match=expected):
        images.import_image(layout, tmp_path / "cache", name="local/evil:1")
    assert images.list_images(tmp_path / "cache") == []
    assert "docker.io/local/evil:1" not in Store.at(tmp_path / "cache").tags()


def test_a_zstd_layer_is_checked_too(tmp_path):
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo("../x")
        tar.addfile(info, io.BytesIO(b""))
    run(["zstd", "-q", bad, "-o", tmp_path / "bad.tar.zst"], timeout=60)
    with pytest.raises(BuildError, match="contains '..'"):
        layers.check_layer(tmp_path / "bad.tar.zst", "r", "sha256:0")


CAP_NET_BIND_SERVICE = bytes.fromhex("0100000200040000000000000000000000000000")   # vfs_cap_data v2


@pytest.fixture
def mounted(tmp_path):
    """mount(erofs image) -> its read-only loop mount (fsck.erofs 1.5's --extract and
    dump.erofs do not show xattrs; the kernel's erofs does)."""
    points = []

    def mount(image: Path) -> Path:
        point = tmp_path / f"mnt{len(points)}"
        point.mkdir()
        run(["mount", "-t", "erofs", "-o", "loop,ro", image, point], timeout=30)
        points.append(point)
        return point
    yield mount
    for point in points:
        run(["umount", point], timeout=30)


def test_xattrs_in_a_layer_are_in_the_rootfs(tmp_path, mounted):
    """A user.* xattr and security.capability, in the layer's PAX headers (as docker and
    buildkit write them), are kept by umoci and by mkfs.erofs."""
    layer = tmp_path / "xattr.tar"
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, key, value in [("tagged", "user.kindling", b"hello-xattr"),
                                 ("capped", "security.capability", CAP_NET_BIND_SERVICE)]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = 3, 0o755
            info.pax_headers = {f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape")}
            tar.addfile(info, io.BytesIO(b"hi\n"))
    layout = make_image(tmp_path / "layout", "1", [layer])
    image = images.import_image(layout, tmp_path / "cache", name="local/xattr:1")
    root = mounted(image.rootfs)
    assert os.getxattr(root / "tagged", "user.kindling") == b"hello-xattr"
    assert os.getxattr(root / "capped", "security.capability") == CAP_NET_BIND_SERVICE
    assert os.listxattr(root / "capped") == ["security.capability"]


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(size) -> a tmpfs of that size (e.g. "3m")."""
    mounts = []

    def make(size: str) -> Path:
        mount = tmp_path / f"small{len(mounts)}"
        mount.mkdir()
        run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mount], timeout=30)
        mounts.append(mount)
        return mount
    yield make
    for mount in mounts:
        run(["umount", mount], timeout=30)


def _consistent_and_empty(cache_dir: Path) -> None:
    store = Store.at(cache_dir)
    assert store.tags() == {}
    assert not (store.root / "images").exists() or os.listdir(store.root / "images") == []
    assert [p for p in os.listdir(store.root) if p.startswith(".work-")] == []
    assert images.list_images(cache_dir) == []


def test_a_full_disk_is_a_clear_error_and_the_cache_stays_consistent(app_layout, small_disk):
    """3 MiB: room for the store's blobs, not for the converted rootfs too."""
    disk = small_disk("3m")
    with pytest.raises(BuildError, match="image docker.io/local/full:1: .*disk full"):
        images.import_image(app_layout, disk, name="local/full:1")
    _consistent_and_empty(disk)


def test_a_disk_full_while_pulling_the_blobs(app_ref, small_disk):
    """512 KiB: not even the layers fit; skopeo's error, the store as it was."""
    disk = small_disk("512k")
    with pytest.raises(BuildError, match=f"image {app_ref}: disk full \\(no space left on device\\) "
                                         "while storing it; nothing was kept"):
        images.pull(app_ref, disk, access=Access(insecure=True))
    _consistent_and_empty(disk)
    # what skopeo kept are whole, verified blobs (no name refers to them; gc drops them)
    blobs = Store.at(disk).layout / "blobs" / "sha256"
    for blob in blobs.iterdir() if blobs.exists() else ():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_rm_drops_the_name_the_rootfs_and_unshared_blobs(app_layout, tmp_path):
    cache_dir = tmp_path / "cache"
    a = images.import_image(app_layout, cache_dir, name="local/a:1")
    images.import_image(app_layout, cache_dir, name="local/b:1")       # the same manifest
    images.remove("local/a:1", cache_dir)
    assert a.rootfs.exists()                                             # b still uses it
    images.remove("local/b:1", cache_dir)
    assert not a.rootfs.exists()
    assert not Store.at(cache_dir).blob(a.info["layers"][0]["digest"]).exists()
    with pytest.raises(BuildError, match="image local/b:1: not in the image store"):
        images.lookup("local/b:1", cache_dir)


# --- docker's rules for the defaults (host_shim/images.py) ----------------------------------

def _opts(**kw):
    base = dict(image="app", insecure_registries=(), entrypoint=None, command=(), env=(),
                workdir=None, user=None)
    return SimpleNamespace(**(base | kw))


@pytest.fixture
def fake_image(monkeypatch):
    from host_shim import images as host_images
    config = {"Entrypoint": ["/bin/ep"], "Cmd": ["c1", "c2"], "Env": ["A=1", "B=x=y"],
              "WorkingDir": "/wd", "User": "app"}
    monkeypatch.setattr(host_images, "ensure", lambda ref, insecure=(): SimpleNamespace(config=config))
    return host_images


@pytest.mark.parametrize("kw, argv", [
    ({}, ("/bin/ep", "c1", "c2")),
    ({"command": ("x", "y")}, ("/bin/ep", "x", "y")),                # replaces Cmd, keeps Entrypoint
    ({"entrypoint": "/bin/sh"}, ("/bin/sh",)),                        # resets Cmd
    ({"entrypoint": "/bin/sh", "command": ("-c", "id")}, ("/bin/sh", "-c", "id")),
    ({"entrypoint": "", "command": ("ls",)}, ("ls",)),
])
def test_the_command_follows_dockers_rules(fake_image, kw, argv):
    assert fake_image.command(_opts(**kw)) == argv


def test_env_workdir_and_user_default_to_the_images(fake_image):
    assert fake_image.program_defaults(_opts()) == {
        "env": {"A": "1", "B": "x=y"}, "workdir": "/wd", "user": "app"}
    assert fake_image.program_defaults(_opts(env=(("A", "2"),), workdir="/w", user="0:0")) == {
        "env": {"A": "2", "B": "x=y"}, "workdir": "/w", "user": "0:0"}


def test_insecure_registries_from_the_config_file(home):
    from host_shim import images as host_images
    from host_shim.errors import KindlingError
    (home / "registries.json").write_text('{"insecure": ["reg:5000"]}')
    assert host_images.insecure_hosts(["x:1"]) == {"reg:5000", "x:1"}
    (home / "registries.json").write_text('{"insecure": "reg:5000"}')
    with pytest.raises(KindlingError, match="registries.json: \"insecure\" must be a list"):
        host_images.insecure_hosts()
    (home / "registries.json").write_text('{"cert_dirs": {"reg:5000": "/ca"}}')
    assert host_images.access("reg:5000/a:1").cert_dir == Path("/ca")
    assert host_images.access("reg:5000/a:1", cert_dir="/mine").cert_dir == Path("/mine")
    assert host_images.access("other:1/a:1").cert_dir is None
    (home / "registries.json").write_text('{"cert_dirs": ["/ca"]}')
    with pytest.raises(KindlingError, match=r"\"cert_dirs\" must map HOST\[:PORT\] to a directory"):
        host_images.access("reg:5000/a:1")


# --- the CLI -------------------------------------------------------------------------------

def kindling(cache_dir: Path, *args):
    env = dict(os.environ, KINDLING_CACHE=str(cache_dir), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "host_shim.cli", *args], cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)


def test_the_cli_pulls_lists_inspects_and_removes(app_ref, tmp_path):
    cache_dir = tmp_path / "cache"
    host = app_ref.split("/")[0]
    pulled = kindling(cache_dir, "image", "pull", "--json", "--insecure-registry", host, app_ref)
    assert pulled.returncode == 0, pulled.stderr
    digest = json.loads(pulled.stdout)["digest"]
    listed = json.loads(kindling(cache_dir, "image", "list", "--json").stdout)
    assert [(i["ref"], i["digest"]) for i in listed] == [(app_ref, digest)]
    assert app_ref in kindling(cache_dir, "image", "list").stdout
    shown = json.loads(kindling(cache_dir, "image", "inspect", app_ref).stdout)
    assert shown["config"]["User"] == "1000:1000"
    assert kindling(cache_dir, "image", "rm", app_ref).stdout.strip() == app_ref
    assert json.loads(kindling(cache_dir, "image", "list", "--json").stdout) == []


@pytest.mark.parametrize("args, message", [
    (["image", "pull", "Bad Name"], "image reference 'Bad Name': expected NAME[:TAG]"),
    (["image", "inspect", "nothing:1"], "image nothing:1: not in the image store"),
    (["image", "import", "/no/such/file"], "/no/such/file: no such file or directory"),
    (["run", "--image", "x:1", "--rootfs", "/", "--", "true"], "--image x:1 and --rootfs"),
])
def test_cli_errors_exit_125(args, message, tmp_path):
    r = kindling(tmp_path / "cache", *args)
    assert r.returncode == 125, r.stderr
    assert message in r.stderr
