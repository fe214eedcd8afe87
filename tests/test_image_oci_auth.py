"""Pulls over https from a registry that wants credentials, against real components:
Debian's docker-registry with a test CA's certificate, basic auth (htpasswd, bcrypt)
and token auth (a token server of tests/registry_auth.py).  Host only."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from image_build.errors import BuildError
from image_build.oci import images, skopeo
from image_build.oci.access import Access
from image_build.oci.store import Store
from tests.oci_fixtures import Registry, app_layout, oci_work  # noqa: F401
from tests.registry_auth import TokenServer, auth_file, htpasswd_file, make_pki

ROOT = Path(__file__).resolve().parent.parent
USER, PASSWORD = "alice", "s3cret-pw"


@pytest.fixture(scope="module")
def pki(oci_work):
    return make_pki(oci_work / "pki")


def _push_args(pki, oci_work, registry_host: str) -> list[str]:
    authfile = auth_file(oci_work / f"push-auth-{registry_host.split(':')[1]}.json",
                         registry_host, USER, PASSWORD)
    return ["--dest-cert-dir", str(pki.cert_dir), "--dest-authfile", str(authfile)]


def _start(work: Path, pki, auth: dict, oci_work) -> Registry:
    reg = Registry(work, tls=pki, auth=auth)
    reg.push_args = _push_args(pki, oci_work, reg.host)
    return reg


@pytest.fixture(scope="module")
def basic_registry(oci_work, pki):
    htpasswd = htpasswd_file(oci_work / "htpasswd", USER, PASSWORD)
    reg = _start(oci_work / "basic", pki, {"htpasswd": {"realm": "kindling-test",
                                                         "path": str(htpasswd)}}, oci_work)
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def basic_ref(basic_registry, app_layout):
    return basic_registry.push(f"oci:{app_layout}:1", "test/app:1")


@pytest.fixture(scope="module")
def token_server(oci_work, pki):
    server = TokenServer(oci_work, pki, USER, PASSWORD)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def token_ref(oci_work, pki, token_server, app_layout):
    reg = _start(oci_work / "token", pki, token_server.registry_auth(), oci_work)
    yield reg.push(f"oci:{app_layout}:1", "test/app:1")
    reg.stop()


def _nothing_cached(cache_dir: Path) -> None:
    store = Store.at(cache_dir)
    assert store.tags() == {}
    blobs = store.layout / "blobs" / "sha256"
    assert not blobs.exists() or os.listdir(blobs) == []
    assert images.list_images(cache_dir) == []


def test_https_with_a_test_ca_and_basic_auth(basic_ref, pki, tmp_path):
    image = images.pull(basic_ref, tmp_path / "cache",
                        access=Access(cert_dir=pki.cert_dir, creds=f"{USER}:{PASSWORD}"))
    assert image.config["User"] == "1000:1000"
    assert image.rootfs.is_file() and image.info["rootfs_digest"].startswith("sha256:")


def test_a_certificate_from_an_unknown_ca_is_refused(basic_ref, tmp_path):
    with pytest.raises(BuildError, match=f"image {basic_ref}: the registry 127.0.0.1:\\d+'s TLS "
                                         "certificate was not accepted .*--cert-dir"):
        images.pull(basic_ref, tmp_path / "cache", access=Access(creds=f"{USER}:{PASSWORD}"))
    _nothing_cached(tmp_path / "cache")


@pytest.mark.parametrize("creds", [None, f"{USER}:wrong", f"mallory:{PASSWORD}"])
def test_wrong_or_missing_credentials_name_the_registry(creds, basic_ref, pki, tmp_path):
    host = basic_ref.split("/")[0]
    with pytest.raises(BuildError, match=f"image {basic_ref}: the registry {host} refused "
                                         "access: wrong or missing credentials"):
        images.pull(basic_ref, tmp_path / "cache", access=Access(cert_dir=pki.cert_dir, creds=creds))
    _nothing_cached(tmp_path / "cache")


def test_the_password_is_never_on_skopeos_argv(basic_ref, pki, tmp_path, monkeypatch):
    seen = []
    real_run = skopeo.run

    def spy(argv, **kw):
        argv = [str(a) for a in argv]
        authfile = Path(argv[argv.index(next(a for a in argv if a.endswith("authfile"))) + 1])
        seen.append((argv, stat.S_IMODE(authfile.stat().st_mode), authfile,
                     json.loads(authfile.read_text())))
        return real_run(argv, **kw)

    monkeypatch.setattr(skopeo, "run", spy)
    images.pull(basic_ref, tmp_path / "cache",
                access=Access(cert_dir=pki.cert_dir, creds=f"{USER}:{PASSWORD}"))
    assert [argv[3] for argv, *_ in seen] == ["inspect", "copy"]
    for argv, mode, authfile, data in seen:
        assert not any(PASSWORD in a for a in argv), argv
        assert mode == 0o600
        assert list(data["auths"]) == [basic_ref.split("/")[0]]
    assert not seen[0][2].exists()                      # deleted after the pull


def test_token_auth(token_ref, token_server, pki, tmp_path):
    before = token_server.requests
    image = images.pull(token_ref, tmp_path / "cache",
                        access=Access(cert_dir=pki.cert_dir, creds=f"{USER}:{PASSWORD}"))
    assert image.config["WorkingDir"] == "/work/dir"
    assert token_server.requests > before               # the registry sent us to the token server
    host = token_ref.split("/")[0]
    with pytest.raises(BuildError, match=f"the registry {host} refused access"):
        images.pull(token_ref, tmp_path / "other",
                    access=Access(cert_dir=pki.cert_dir, creds=f"{USER}:wrong"))
    _nothing_cached(tmp_path / "other")


@pytest.mark.parametrize("access, message", [
    (Access(creds="no-colon"), "--creds: expected USER:PASS"),
    (Access(creds=":pw"), "--creds: expected USER:PASS"),
    (Access(cert_dir=Path("/no/such/dir")), "--cert-dir /no/such/dir: no such directory"),
    (Access(authfile=Path("/no/such.json")), "--authfile /no/such.json: no such file"),
])
def test_bad_access_options_name_the_option(access, message, tmp_path):
    with pytest.raises(BuildError, match=message):
        images.pull("127.0.0.1:1/test/app:1", tmp_path / "cache", access=access)


def test_creds_are_hidden_in_repr():
    assert PASSWORD not in repr(Access(creds=f"{USER}:{PASSWORD}"))


# --- the CLI: --creds, --authfile, skopeo's own auth files, registries.json ------------------

def kindling(tmp_path: Path, *args, env=None, stdin: str | None = None):
    full = {k: v for k, v in os.environ.items() if k != "REGISTRY_AUTH_FILE"}
    full.update(KINDLING_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT),
                KINDLING_HOME=str(tmp_path / "home"), **(env or {}))
    return subprocess.run([sys.executable, "-m", "host_shim.cli", "image", "pull", *args],
                          cwd=ROOT, env=full, input=stdin or "", capture_output=True,
                          text=True, timeout=300)


def test_cli_creds_and_a_refusal_exiting_125(basic_ref, pki, tmp_path):
    host = basic_ref.split("/")[0]
    ok = kindling(tmp_path, "--cert-dir", str(pki.cert_dir), "--creds", f"{USER}:{PASSWORD}",
                  basic_ref)
    assert ok.returncode == 0, ok.stderr
    bad = kindling(tmp_path / "b", "--cert-dir", str(pki.cert_dir), "--creds", f"{USER}:no",
                   basic_ref)
    assert bad.returncode == 125, bad.stderr
    assert f"the registry {host} refused access: wrong or missing credentials" in bad.stderr
    _nothing_cached(tmp_path / "b" / "cache")


def test_cli_creds_user_alone_reads_the_password_from_stdin(basic_ref, pki, tmp_path):
    """The password on no command line at all, kindling's included."""
    args = ["--cert-dir", str(pki.cert_dir), "--creds", USER, basic_ref]
    ok = kindling(tmp_path / "a", *args, stdin=f"{PASSWORD}\n")
    assert ok.returncode == 0, ok.stderr
    bad = kindling(tmp_path / "b", *args, stdin="wrong\n")
    assert bad.returncode == 125 and "wrong or missing credentials" in bad.stderr, bad.stderr


def test_cli_authfile_and_skopeos_own_auth_files(basic_ref, pki, tmp_path):
    """--authfile; without it skopeo's own: $REGISTRY_AUTH_FILE, ~/.config/containers/auth.json."""
    host = basic_ref.split("/")[0]
    authfile = auth_file(tmp_path / "auth.json", host, USER, PASSWORD)
    given = kindling(tmp_path / "a", "--cert-dir", str(pki.cert_dir), "--authfile",
                     str(authfile), basic_ref)
    assert given.returncode == 0, given.stderr
    by_env = kindling(tmp_path / "e", "--cert-dir", str(pki.cert_dir), basic_ref,
                      env={"REGISTRY_AUTH_FILE": str(authfile)})
    assert by_env.returncode == 0, by_env.stderr
    home = tmp_path / "userhome"
    (home / ".config/containers").mkdir(parents=True)
    auth_file(home / ".config/containers/auth.json", host, USER, PASSWORD)
    by_home = kindling(tmp_path / "h", "--cert-dir", str(pki.cert_dir), basic_ref,
                       env={"HOME": str(home), "XDG_RUNTIME_DIR": str(tmp_path / "no-runtime")})
    assert by_home.returncode == 0, by_home.stderr


def test_cli_cert_dirs_from_registries_json(basic_ref, pki, tmp_path):
    host = basic_ref.split("/")[0]
    (tmp_path / "home").mkdir()
    (tmp_path / "home/registries.json").write_text(json.dumps({"cert_dirs": {host: str(pki.cert_dir)}}))
    r = kindling(tmp_path, "--creds", f"{USER}:{PASSWORD}", basic_ref)
    assert r.returncode == 0, r.stderr


def test_the_api_takes_cert_dir_and_creds(basic_ref, pki, tmp_path, monkeypatch, home):
    from host_shim.api import Kindling
    from host_shim.errors import KindlingError
    monkeypatch.setenv("KINDLING_CACHE", str(tmp_path / "cache"))
    shown = Kindling(home).image_pull(basic_ref, cert_dir=pki.cert_dir, creds=f"{USER}:{PASSWORD}")
    assert shown["ref"] == basic_ref and shown["config"]["User"] == "1000:1000"
    with pytest.raises(KindlingError, match="refused access: wrong or missing credentials") as e:
        Kindling(home).image_pull(basic_ref, cert_dir=pki.cert_dir, creds=f"{USER}:nope")
    assert e.value.exit_code is None                      # EXIT_KINDLING, 125
