"""The systemd units of systemd_units/: rendering, the agent's env file, and
`systemd-analyze verify` on the units as PID 1 installs them into a root that
holds the real initrd runtime at /run/kindling/initrd."""

import shutil
import subprocess
from pathlib import Path

import pytest

import systemd_units
from test_image_build import built, cache_dir, initrd_entries, initrd_root  # noqa: F401 (fixtures)

AGENT_ARGS = ["--transport", "serial", "--path", "/dev/virtio-ports/org.kindling.agent.0"]
TARBALL = systemd_units.RUNTIME + "/usr/lib/kindling/headers/linux-headers-6.1.0-57-cloud-amd64.tar.gz"


def unit_files():
    return sorted(p.name for p in Path(systemd_units.UNIT_DIR).glob("*.service"))


def test_the_units_are_the_agent_and_the_headers_oneshot():
    assert unit_files() == sorted([systemd_units.AGENT_UNIT, systemd_units.HEADERS_UNIT])


@pytest.mark.parametrize("name", unit_files())
def test_render_fills_in_every_placeholder(name):
    text = systemd_units.render(name, "/rt", "/rt/h.tar.gz")
    assert "@" not in text.replace("@RUNTIME@", "")  # nothing left to fill in
    assert "/rt/usr/bin/python3.11" in text
    directives = [line for line in text.splitlines() if not line.startswith("#")]
    assert not [d for d in directives if "network" in d]  # started early, never waits for the network
    assert "DefaultDependencies=no" in directives
    assert "StandardOutput=journal+console" in text


def test_env_file_quotes_what_systemd_would_interpret():
    text = systemd_units.env_file_text({"A": 'x "y" $HOME `z` \\n', "B": ""})
    assert text == 'A="x \\"y\\" \\$HOME \\`z\\` \\\\n"\nB=""\n'


@pytest.mark.parametrize("name", ["", "1A", "A-B", "A=B", "A B"])
def test_env_file_refuses_names_systemd_cannot_carry(name):
    with pytest.raises(ValueError, match="environment name"):
        systemd_units.env_file_text({name: "v"})


def test_install_writes_enables_and_writes_the_env_file(tmp_path):
    written = systemd_units.install(tmp_path, agent_args=AGENT_ARGS, agent_env={"PATH": "/bin"},
                                    headers_tarball=TARBALL)
    system = tmp_path / "etc/systemd/system"
    assert [Path(p).name for p in written] == [systemd_units.AGENT_UNIT, systemd_units.HEADERS_UNIT]
    link = system / "sysinit.target.wants" / systemd_units.AGENT_UNIT
    assert link.is_symlink() and str(link.readlink()) == "/etc/systemd/system/kindling-agent.service"
    assert (system / "multi-user.target.wants" / systemd_units.HEADERS_UNIT).is_symlink()
    env = (tmp_path / "run/kindling/agent.env").read_text()
    assert 'KINDLING_AGENT_ARGS="--transport serial --path /dev/virtio-ports/org.kindling.agent.0"' in env
    assert (tmp_path / "run/kindling/agent.env").stat().st_mode & 0o077 == 0


def test_install_without_agent_or_headers_installs_nothing(tmp_path):
    assert systemd_units.install(tmp_path) == []
    assert not (tmp_path / "etc/systemd/system/sysinit.target.wants").exists()


def test_agent_args_with_spaces_are_refused(tmp_path):
    with pytest.raises(ValueError, match="KINDLING_AGENT_ARGS"):
        systemd_units.install(tmp_path, agent_args=["--path", "/dev/a b"])


def _verify(root):
    assert shutil.which("systemd-analyze"), "systemd-analyze not found: `make test` installs systemd"
    units = [f"/etc/systemd/system/{n}" for n in unit_files()]
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def root_with_runtime(tmp_path_factory, initrd_root):  # noqa: F811
    root = tmp_path_factory.mktemp("units-root")
    # dev/ holds real device nodes (copying /dev/console would read the console)
    shutil.copytree(initrd_root, root / systemd_units.RUNTIME.lstrip("/"), symlinks=True,
                    ignore=lambda d, names: ["dev"] if Path(d) == initrd_root else [])
    systemd_units.install(root, agent_args=AGENT_ARGS, agent_env={"PATH": "/bin"},
                          headers_tarball=TARBALL)
    return root


def test_systemd_analyze_verify_passes_on_the_installed_units(root_with_runtime):
    result = _verify(root_with_runtime)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kindling" not in result.stderr, result.stderr  # no warnings about our units either


def test_systemd_analyze_verify_fails_without_the_runtime(tmp_path):
    """The check is real: it fails when the runtime the units run on is absent."""
    systemd_units.install(tmp_path, agent_args=AGENT_ARGS, headers_tarball=TARBALL)
    result = _verify(tmp_path)
    assert result.returncode != 0
    assert "is not executable" in result.stderr


# --- the host's unit: `kindling serve` (systemd_units/host/, not installed in guests) ---------

SERVE_UNIT = Path(systemd_units.UNIT_DIR) / "host" / "kindling-serve.service"


def _verify_serve_unit(root: Path, with_kindling: bool):
    """systemd-analyze verify on the serve unit installed in `root`, which has the host's
    own system units (sysinit.target, network-online.target) and, if asked, an executable
    /usr/local/bin/kindling."""
    assert shutil.which("systemd-analyze"), "systemd-analyze not found: `make test` installs systemd"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(SERVE_UNIT, root / "etc/systemd/system")
    if with_kindling:
        (root / "usr/local/bin").mkdir(parents=True)
        (root / "usr/local/bin/kindling").write_text("#!/bin/sh\n")
        (root / "usr/local/bin/kindling").chmod(0o755)
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}",
                           f"/etc/systemd/system/{SERVE_UNIT.name}"],
                          capture_output=True, text=True, timeout=120)


def test_systemd_analyze_verify_passes_on_the_serve_unit(tmp_path):
    result = _verify_serve_unit(tmp_path, with_kindling=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kindling" not in result.stderr, result.stderr


def test_the_serve_unit_check_is_real(tmp_path):
    result = _verify_serve_unit(tmp_path, with_kindling=False)
    assert result.returncode != 0
    assert "/usr/local/bin/kindling is not executable" in result.stderr


def test_the_serve_unit_leaves_the_vms_running_and_serves_with_a_token():
    text = SERVE_UNIT.read_text()
    assert "\nKillMode=process\n" in text
    assert "kindling serve --listen 0.0.0.0:4973 --jwt-secret-file " in text
