"""Markers the program cannot forge (issue 15 §1), in a real TCG guest, exec mode.

One boot: a root program prints every marker kind -- at its start, in the middle,
with and without a trailing newline, as its last output (without a newline, so
PID 1's EXIT lands on the same console line) -- writes marker lines straight to
/dev/ttyS0 and /dev/console, tries to open the control port (by its name and
through PID 1's /proc/1/fd entry), then exits 5.  `kindling run` must exit 5
with every line the program printed, and the instance's facts (`inspect`) and
`logs` must be PID 1's own.
"""

import re

import pytest

from initsys import protocol
from tests.vm import kindling, kindling_json, kindling_run, private_home

pytestmark = pytest.mark.vm

FUTURE = "2030-01-01T00:00:00.000000000Z"
FORGED = [
    'HYPEMAN-EXIT code=0 message="forged at start"',
    f"HYPEMAN-PROGRAM-START ts={FUTURE} mode=exec",
    f"HYPEMAN-AGENT-READY ts={FUTURE}",
    'KINDLING-FATAL stage=disks error="forged"',
    f"HYPEMAN-HEADERS-READY ts={FUTURE}",
    f"HYPEMAN-HEADERS-START ts={FUTURE}",
    'HYPEMAN-HEADERS-FAILED ts=2030-01-01T00:00:00.000000000Z error="forged"',
    "KINDLING-STAGE name=program-start start=0.000000 end=0.000001",
]
PORT = "/dev/virtio-ports/org.kindling.control.0"

SCRIPT = "\n".join([
    *(f"printf '%s\\n' '{line}'" for line in FORGED),
    # no trailing newline: the next output continues the line
    """printf '%s' 'HYPEMAN-EXIT code=1 message="no newline"'; echo ' then text'""",
    "echo middle",
    *(f"printf '%s\\n' '{line}'" for line in reversed(FORGED)),
    """printf '%s\\n' 'HYPEMAN-EXIT code=0 message="to ttyS0"' > /dev/ttyS0""",
    """printf '%s\\n' 'HYPEMAN-EXIT code=0 message="to console"' > /dev/console""",
    f"""if ( : > {PORT} ) 2>/dev/null; then echo "port: opened"; else echo "port: refused"; fi""",
    f"""( : > {PORT} ) 2>&1 | sed 's/.*: /port error: /'""",
    """for fd in /proc/1/fd/*; do case "$(readlink "$fd")" in /dev/vport*)""",
    """  ( : > "$fd" ) 2>&1 | sed 's/.*: /pid1 fd error: /';; esac; done""",
    """printf '%s' 'HYPEMAN-EXIT code=0 message="last"'""",
    "exit 5",
])

EXPECTED = [
    *FORGED,
    'HYPEMAN-EXIT code=1 message="no newline" then text',
    "middle",
    *reversed(FORGED),
    'HYPEMAN-EXIT code=0 message="to ttyS0"',
    'HYPEMAN-EXIT code=0 message="to console"',
    "port: refused",
    "port error: BUSY",
    "pid1 fd error: BUSY",
    'HYPEMAN-EXIT code=0 message="last"',
]
KERNEL_LINE = re.compile(r"^\[\s*\d+\.\d+\] ")


def normalized(output: str) -> list[str]:
    """The program's lines (kernel log lines aside); strerror(EBUSY) as BUSY."""
    lines = [l for l in output.splitlines() if not KERNEL_LINE.match(l)]
    return [re.sub(r"(error: ).*[Bb]usy.*", r"\1BUSY", l) for l in lines]


@pytest.fixture(scope="module")
def forged_run():
    with private_home("kctl") as home:
        result = kindling_run(home, "--name", "forger", "--no-headers", "--keep", "--",
                              "sh", "-c", SCRIPT)
        yield home, result


def test_run_exits_with_the_programs_code_and_keeps_all_its_output(forged_run):
    _, r = forged_run
    assert r.returncode == 5, r.stderr
    assert 'exited code=5 "exit code 5"' in r.stderr
    assert "forged" not in r.stderr and "last" not in r.stderr
    assert normalized(r.stdout) == EXPECTED


def test_the_control_port_refuses_a_root_program(forged_run):
    _, r = forged_run
    # the exact errno, EBUSY, through the name and through PID 1's own descriptor
    assert "port error: BUSY" in normalized(r.stdout)
    assert "pid1 fd error: BUSY" in normalized(r.stdout)


def test_the_instance_facts_are_pid1s(forged_run):
    home, _ = forged_run
    info = kindling_json(home, "inspect", "forger")
    assert info["exit"] == {"code": 5, "message": "exit code 5"}
    assert info["fatal"] is None
    for kind in (protocol.PROGRAM_START, protocol.AGENT_READY):
        assert info["markers"][kind]["fields"]["ts"] != FUTURE, kind
    assert protocol.HEADERS_READY not in info["markers"]       # --no-headers: none ran
    assert "forged" not in str(info["markers"])


def test_logs_show_every_forged_line(forged_run):
    home, _ = forged_run
    shown = normalized(kindling(home, "logs", "forger").stdout)
    start = shown.index(FORGED[0])
    assert shown[start:start + len(EXPECTED)] == EXPECTED
    assert not any(l.startswith("HYPEMAN-EXIT code=5") for l in shown)


SYSTEMD_SCRIPT = "\n".join([
    *(f"printf '%s\\n' '{line}' > {dev}" for line in FORGED for dev in ("/dev/console", "/dev/ttyS0")),
    f"( : > {PORT} ) 2>&1 | sed 's/.*: /port error: /'",
])


def test_systemd_mode_facts_come_from_pid1_and_the_agent_unit():
    """systemd mode (one Debian boot): Running through the agent unit's AGENT-READY on the
    control port, which it holds; a root command's marker lines on the serial devices
    change nothing, before or after `stop`."""
    with private_home("kctlsd") as home:
        kindling_json(home, "create", "--name", "sd", "--base", "debian", "--no-headers")
        kindling(home, "wait", "sd", "--for", "running", "--timeout", "240")
        out = kindling(home, "exec", "sd", "--", "sh", "-c", SYSTEMD_SCRIPT).stdout
        assert normalized(out) == ["port error: BUSY"], out
        info = kindling_json(home, "inspect", "sd")
        assert info["state"] == "Running", info["state"]
        start = info["markers"][protocol.PROGRAM_START]["fields"]
        assert start["mode"] == "systemd" and start["ts"] != FUTURE
        assert info["markers"][protocol.AGENT_READY]["fields"]["ts"] != FUTURE
        kindling(home, "stop", "sd", "--time", "60")
        info = kindling_json(home, "inspect", "sd")
        assert info["state"] == "Stopped"
        assert info["exit"] is None and info["fatal"] is None, (info["exit"], info["fatal"])
        assert "forged" not in str(info["markers"])


def test_console_only_hosts_find_pid1s_exit_at_the_start_of_a_line(forged_run):
    """The program's last output had no newline: PID 1's EXIT still starts a line (the tty
    adds the newline only when its column is not 0), and it is the last EXIT line."""
    home, _ = forged_run
    log = next(home.glob("instances/*/logs/app.log")).read_bytes().decode(errors="replace")
    lines = [l.rstrip("\r") for l in log.split("\n")]
    exits = [i for i, l in enumerate(lines) if l.startswith("HYPEMAN-EXIT ")]
    assert lines[exits[-1]] == 'HYPEMAN-EXIT code=5 message="exit code 5"', lines[exits[-1]]
    assert lines[exits[-1] - 1] == 'HYPEMAN-EXIT code=0 message="last"'
