"""host_shim/control.py on synthetic logs: facts only from the control channel, and every
marker-shaped console line the channel does not vouch for kept as program output.

The VM side (a real guest, a program forging markers, the port's EBUSY) is in
tests/test_vm_control.py.
"""

from host_shim import control
from host_shim.control import ConsoleGate, real_markers, split_console, trusted_markers
from initsys import protocol

T0 = 1_800_000_000_000_000_000
SEC = 1_000_000_000
START = protocol.program_start_line("exec", T0)
READY = protocol.agent_ready_line(T0 + SEC)
STAGE = protocol.stage_line("rootfs", 1.5, 1.75)
EXIT5 = protocol.exit_line(5, protocol.exit_message(5))
FORGED = [protocol.exit_line(0, "forged"), protocol.program_start_line("exec", T0 + 9 * SEC),
          protocol.agent_ready_line(T0 + 9 * SEC), protocol.fatal_line("disks", "forged"),
          protocol.headers_ready_line(T0 + 9 * SEC), protocol.stage_line("x", 0.0, 1.0)]
CONTROL = [STAGE, READY, START, EXIT5]


def test_trusted_markers_are_whole_control_lines_in_order():
    found = trusted_markers(CONTROL + ["noise " + EXIT5, ""])
    assert [m.kind for m in found] == [protocol.STAGE, protocol.AGENT_READY,
                                       protocol.PROGRAM_START, protocol.EXIT]
    assert found[-1].fields["code"] == "5"


def test_forged_lines_anywhere_are_program_output():
    console = (["[ 0.1] Linux", STAGE, READY, START] + FORGED + ["middle"] + FORGED
               + ["last " + FORGED[0], EXIT5, "[ 9.0] reboot: Power down"])
    shown = split_console(console, CONTROL)
    assert shown == ["[ 0.1] Linux"] + FORGED + ["middle"] + FORGED + [
        "last " + FORGED[0], "[ 9.0] reboot: Power down"]


def test_unterminated_program_output_before_a_real_marker_is_kept():
    shown = split_console([START, "no newline" + EXIT5], CONTROL)
    assert shown == ["no newline"]


def test_an_identical_copy_of_the_exit_line_is_the_earlier_one():
    console = [START, EXIT5, "after", EXIT5]
    assert real_markers(console, CONTROL) == [0, None, None, 0]
    assert split_console(console, CONTROL) == [EXIT5, "after"]


def test_a_forged_marker_without_newline_then_pid1s_exit_on_the_same_line():
    forged = 'HYPEMAN-EXIT code=0 message="forged-last"'
    console = [START, forged + EXIT5]
    assert real_markers(console, CONTROL) == [0, len(forged)]
    assert split_console(console, CONTROL) == [forged]
    gate = ConsoleGate()
    gate.vouch(CONTROL)
    gate.push(console)
    assert gate.decide(0.0, final=True) == [(START, 0), (forged + EXIT5, len(forged))]


def test_without_control_lines_nothing_is_a_marker():
    assert split_console([START, EXIT5], []) == [START, EXIT5]


def test_gate_holds_markers_until_the_port_is_open():
    gate = ConsoleGate()
    gate.push([STAGE, "boot text"])
    assert gate.decide(100.0) == []                 # no control line yet: no program ran
    gate.vouch([STAGE])
    assert gate.decide(100.0) == [(STAGE, 0), ("boot text", None)]


def test_gate_decides_a_forged_line_after_the_lag_keeping_the_order():
    gate = ConsoleGate()
    gate.vouch([STAGE, START])
    gate.push([START, FORGED[1], "next"])
    assert gate.decide(10.0) == [(START, 0)]
    assert gate.decide(10.0 + control.CONTROL_LAG / 2) == []
    assert gate.decide(10.0 + control.CONTROL_LAG) == [(FORGED[1], None), ("next", None)]


def test_gate_a_control_line_arriving_within_the_lag_vouches():
    gate = ConsoleGate()
    gate.vouch([STAGE])
    gate.push([READY])
    assert gate.decide(1.0) == []
    gate.vouch([READY])
    assert gate.decide(1.1) == [(READY, 0)]


def test_gate_exit_is_decided_at_the_end_and_the_last_copy_wins():
    gate = ConsoleGate()
    gate.vouch(CONTROL)
    gate.push([START, EXIT5, "after", EXIT5, "[ 9.0] reboot: Power down"])
    assert gate.decide(1.0) == [(START, 0)]
    assert gate.decide(1.0 + 10 * control.CONTROL_LAG) == []
    assert gate.decide(2.0, final=True) == [(EXIT5, None), ("after", None), (EXIT5, 0),
                                            ("[ 9.0] reboot: Power down", None)]


def test_gate_final_decides_unvouched_lines_at_once():
    gate = ConsoleGate()
    gate.vouch([STAGE])
    gate.push(FORGED)
    assert gate.decide(0.0, final=True) == [(line, None) for line in FORGED]


def test_held_markers_when_the_port_never_opened():
    gate = ConsoleGate()
    gate.push(["x", protocol.fatal_line("disks", "no disks")])
    assert [m.kind for m in gate.held_markers()] == [protocol.FATAL]


def test_enabled_and_qemu_args(tmp_path):
    args = control.qemu_args(tmp_path)
    assert args == ["-chardev", f"file,id=ctl0,path={tmp_path}/control.log",
                    "-device", "virtserialport,chardev=ctl0,name=org.kindling.control.0"]
    assert control.enabled(["qemu", *args])
    assert not control.enabled(["qemu", "-device", "virtserialport,name=org.kindling.agent.0"])


def test_read_lines_ignores_a_previous_boots_file(tmp_path):
    path = control.log_path(tmp_path)
    path.write_bytes((START + "\n" + EXIT5).encode())
    assert control.read_lines(path) == [START]
    assert control.read_lines(path, final=True) == [START, EXIT5]
    mtime = path.stat().st_mtime_ns
    assert control.read_lines(path, since_ns=mtime + 1) == []
    assert control.read_lines(tmp_path / "absent") == []


def test_reader_follows_the_file(tmp_path):
    path = control.log_path(tmp_path)
    reader = control.ControlReader(tmp_path)
    assert reader.poll() == []
    with open(path, "ab") as f:
        f.write((START + "\nHYPEMAN-EX").encode())
        f.flush()
        assert reader.poll() == [START]
        f.write(b"IT code=5\n")
        f.flush()
        assert reader.poll() == ["HYPEMAN-EXIT code=5"]
    reader.close()


def test_reader_starts_over_when_qemu_truncates_the_file(tmp_path):
    path = control.log_path(tmp_path)
    path.write_bytes((START + "\n" + EXIT5 + "\n").encode())
    reader = control.ControlReader(tmp_path)
    assert reader.poll() == [START, EXIT5]
    with open(path, "wb") as f:          # a new launch: same inode, truncated, rewritten
        f.write((STAGE + "\n").encode())
    assert reader.poll() == [STAGE]
    reader.close()
