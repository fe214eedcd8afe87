"""PID 1 in exec mode, proven in real VMs under TCG (issue 2 acceptance)."""

import json

import pytest

from tests.vm import kindling_run

pytestmark = pytest.mark.vm


@pytest.fixture
def home(tmp_path):
    return tmp_path


def test_killed_by_signal_reports_128_plus_signal(home):
    r = kindling_run(home, "--", "sh", "-c", "kill -9 $$")
    assert r.returncode == 137, r.stderr
    assert 'exited code=137 "killed by signal 9 (SIGKILL)"' in r.stderr


def test_missing_command_is_127(home):
    r = kindling_run(home, "--", "no-such-command", "arg")
    assert r.returncode == 127, r.stderr
    assert '"command not found"' in r.stderr


def test_not_executable_is_126(home):
    r = kindling_run(home, "--", "/etc/passwd")
    assert r.returncode == 126, r.stderr
    assert '"permission denied (command not executable)"' in r.stderr


def test_default_path_and_home(home):
    r = kindling_run(home, "--", "sh", "-c", 'echo "$HOME|$PATH|$(pwd)"')
    assert r.returncode == 0, r.stderr
    assert r.stdout == "/root|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|/\n"


def test_a_missing_workdir_is_made_and_entered(home):
    """The usual spawn (no user): PID 1 is in the new root for the moment of a vfork
    spawn (initsys/program.py); the workdir is made there, not in the initramfs."""
    r = kindling_run(home, "--workdir", "/made/by/pid1", "--", "sh", "-c",
                     'echo "$(pwd)|$(id -u)|$(ls -d /made/by/pid1)|$(ls /usr/lib/kindling 2>&1 | head -c 40)"')
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("/made/by/pid1|0|/made/by/pid1|ls: /usr/lib/kindling: No such file"), r.stdout


def test_a_user_runs_in_its_workdir_with_its_ids(home):
    """config.json `user` (a number: no passwd entry needed): the forked child chroots,
    drops its privileges, then enters the workdir it made."""
    r = kindling_run(home, "--user", "1234:2345", "--workdir", "/w/x", "--", "sh", "-c",
                     'echo "$(pwd)|$(id -u)|$(id -g)|$HOME"')
    assert r.returncode == 0, r.stderr
    assert r.stdout == "/w/x|1234|2345|/\n", r.stdout


def test_sigterm_to_pid1_is_forwarded_to_the_program(home):
    script = 'trap "echo got TERM; exit 5" TERM; kill -TERM 1; i=0; while [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; exit 9'
    r = kindling_run(home, "--", "sh", "-c", script)
    assert r.returncode == 5, r.stderr
    assert "got TERM" in r.stdout


ORPHANS = r"""
for i in $(seq 200); do (sleep 0.5 &); done
while [ -n "$(pidof sleep)" ]; do sleep 0.2; done
sleep 0.5
z=0
for f in /proc/[0-9]*/stat; do
  read -r line < "$f" 2>/dev/null || continue
  case "${line##*) }" in Z*) z=$((z+1));; esac
done
echo "zombies=$z"
exit 3
"""


def test_orphans_are_reaped_and_exit_code_stays_exact(home):
    r = kindling_run(home, "--", "sh", "-c", ORPHANS)
    assert r.returncode == 3, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "zombies=0"


def test_config_with_cmd_as_string_is_fatal(home, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"entrypoint": ["/bin/echo"], "cmd": "hello", "skip_guest_agent": True}))
    r = kindling_run(home, "--config-json", str(cfg))
    assert r.returncode == 125, r.stderr
    assert "guest failed in stage config" in r.stderr
    assert "'cmd'" in r.stderr and "list of strings" in r.stderr


def test_unreadable_config_disk_is_fatal(home, tmp_path):
    disk = tmp_path / "garbage.img"
    disk.write_bytes(b"\xde\xad\xbe\xef" * (256 * 1024))
    r = kindling_run(home, "--config-disk", str(disk))
    assert r.returncode == 125, r.stderr
    assert "guest failed in stage config" in r.stderr
    assert "config disk" in r.stderr


def test_fatal_line_is_exactly_one_line_with_stage_and_quoted_error(home, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"entrypoint": ["/bin/true"], "workdir": "relative/dir"}))
    r = kindling_run(home, "--keep", "--config-json", str(cfg))
    assert r.returncode == 125, r.stderr
    (log,) = home.glob("instances/*/logs/app.log")
    fatal = [line for line in log.read_text().splitlines() if "KINDLING-FATAL" in line]
    assert fatal == ["KINDLING-FATAL stage=config error=\"config.json field 'workdir': "
                     "expected an absolute path, got 'relative/dir'\""]


def test_stop_is_graceful_through_the_acpi_power_button(home):
    """`kindling stop` sends an ACPI power-down; PID 1 forwards SIGTERM to the program."""
    import os
    import subprocess
    import time

    from tests.vm import KINDLING, ROOT

    env = dict(os.environ, KINDLING_HOME=str(home), KINDLING_ACCEL="tcg")

    def kindling(*args):
        return subprocess.run([*KINDLING, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=180, stdin=subprocess.DEVNULL)

    script = 'trap "echo got-term; exit 3" TERM; while true; do sleep 0.2; done'
    assert kindling("create", "--name", "pb", "--", "sh", "-c", script).returncode == 0
    try:
        assert kindling("wait", "pb", "--for", "running", "--timeout", "150").returncode == 0
        t = time.monotonic()
        assert kindling("stop", "pb", "-t", "60").returncode == 0
        assert time.monotonic() - t < 30, "stop waited for its grace period: no graceful path"
        info = json.loads(kindling("inspect", "pb", "--json").stdout)
        assert info["exit"]["code"] == 3
        assert "got-term" in kindling("logs", "pb").stdout
    finally:
        kindling("delete", "pb")
