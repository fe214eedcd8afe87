"""systemd mode in real VMs under QEMU/TCG: the built-in Debian rootfs, whose own
command is /sbin/init, boots with init_mode chosen automatically; PID 1 installs
our units and execs systemd; the agent unit makes the guest Running; systemd
stops cleanly on `kindling stop`.  Nothing is faked: real systemd, real journal,
real ACPI power button."""

import re
import time

import pytest

from initsys import protocol
from tests.test_host_shim_lifecycle_vm import eventually, home, kindling, kindling_json  # noqa: F401
from tests.vm import kindling_run

pytestmark = pytest.mark.vm

ODD_VALUE = 'a "b" $c `d` \\e'


def serial_log(home):
    logs = list(home.glob("instances/*/logs/app.log"))
    assert len(logs) == 1, logs
    return logs[0].read_text(errors="replace")


def sentinel_ts(log, prefix):
    for line in log.splitlines():
        marker = protocol.parse_line(line)
        if marker is not None and marker.kind == prefix:
            return marker.ts
    return None


def test_debian_systemd_guest(home):  # noqa: F811
    created = kindling_json(home, "create", "--name", "sd", "--base", "debian",
                            "--env", f"ODD={ODD_VALUE}")
    assert created["state"] in ("Initializing", "Running"), created
    kindling(home, "wait", "sd", "--for", "running", "--timeout", "240")
    log = serial_log(home)
    start = sentinel_ts(log, protocol.PROGRAM_START)
    ready = sentinel_ts(log, protocol.AGENT_READY)
    assert "HYPEMAN-PROGRAM-START" in log and "mode=systemd" in log, log[-3000:]
    assert start is not None and ready is not None and start < ready, log[-3000:]

    # the agent runs the command in the systemd-managed root, with the config's env
    out = kindling(home, "exec", "sd", "--", "sh", "-c",
                   'cat /proc/1/comm; printf "%s\\n" "$ODD"; env').stdout.splitlines()
    assert out[0] == "systemd"
    assert out[1] == ODD_VALUE
    assert not [line for line in out if line.startswith(("KINDLING_", "INVOCATION_ID="))], out

    # our units did not fail, and systemd reached a running system
    failed = kindling(home, "exec", "sd", "--", "systemctl", "--failed", "--no-legend", "--plain",
                      check=False).stdout
    assert "kindling" not in failed, failed
    state = kindling(home, "exec", "sd", "--", "systemctl", "is-system-running", "--wait",
                     check=False, timeout=300).stdout.strip()
    assert state == "running", f"is-system-running: {state}; failed units:\n{failed}"
    units = kindling(home, "exec", "sd", "--", "systemctl", "is-active",
                     "kindling-agent.service", "kindling-headers.service", check=False).stdout.split()
    assert units == ["active", "active"], units

    # the headers oneshot: READY on the console, the build tree in place
    eventually(lambda: protocol.HEADERS_READY in serial_log(home) or
               protocol.HEADERS_FAILED in serial_log(home), "the headers unit", timeout=600)
    assert protocol.HEADERS_FAILED not in serial_log(home), serial_log(home)[-3000:]
    kindling(home, "exec", "sd", "--", "sh", "-c", 'test -f "/lib/modules/$(uname -r)/build/Makefile"')
    status = kindling(home, "exec", "sd", "--", "cat", "/run/kindling/kernel-headers.status").stdout
    assert status.strip() == "ready"

    # stop: ACPI power button -> logind -> systemd shuts down and powers off
    began = time.monotonic()
    kindling(home, "stop", "sd", "--time", "60")
    took = time.monotonic() - began
    assert kindling_json(home, "inspect", "sd")["state"] == "Stopped"
    log = serial_log(home)
    assert re.search(r"reboot: Power down", log), log[-2000:]
    assert took < 60, f"stop took {took:.1f} s: systemd did not power off by itself"


def test_systemd_mode_with_a_missing_init_is_fatal(tmp_path):
    """init_mode systemd on an image without that init: one FATAL line, exit 125, power-off."""
    result = kindling_run(tmp_path, "--init-mode", "systemd", "--", "/sbin/no-such-init")
    assert result.returncode == 125, result.stdout + result.stderr
    # `kindling run` reports the guest's KINDLING-FATAL line: its stage and its reason
    assert re.search(r"stage systemd: init_mode systemd: /sbin/no-such-init is not an executable "
                     r"file in the image", result.stderr), result.stderr


def test_run_a_program_in_a_systemd_guest(tmp_path):
    """`kindling run --init-mode systemd -- CMD`: systemd boots (the image's /sbin/init), CMD
    runs through the agent once Running, its output streamed apart from the console, and
    `run` exits with CMD's code after stopping the guest (kindling_run: no QEMU left)."""
    result = kindling_run(tmp_path, "--base", "debian", "--init-mode", "systemd", "--no-headers",
                          "--timeout", "600", "--boot-timeout", "600", "--", "sh", "-c",
                          'echo "hi from $(cat /proc/1/comm)"; echo oops >&2; exit 7',
                          timeout=900)
    assert result.returncode == 7, result.stderr[-3000:]
    assert result.stdout == "hi from systemd\n"       # the program's output, nothing else
    assert "oops\n" in result.stderr
    assert "exited code=7" in result.stderr
    assert list(tmp_path.glob("instances/*")) == []
