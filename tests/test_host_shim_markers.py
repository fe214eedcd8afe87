"""host_shim/markers.py: marker discovery in the serial logs (PROTOCOL.md §6), on real files.

The VM side (a real QEMU writing and rotating the log, a shim restarted mid-boot)
is in tests/test_host_shim_lifecycle_vm.py; these pin the rules on crafted logs.
"""

import os


from host_shim import markers
from host_shim.markers import MarkerRecord, iter_lines, scan, scan_due, scan_logs
from host_shim.state import Observation, State, Vmm, derive_state
from initsys import protocol

T0 = 1_800_000_000_000_000_000          # ns since the epoch
SEC = 1_000_000_000
START_OLD = protocol.program_start_line("exec", T0)
START_NEW = protocol.program_start_line("exec", T0 + 5 * SEC)
READY = protocol.agent_ready_line(T0 + 6 * SEC)

STREAM = (b"[    0.1] Linux version 6.1\r\n"
          + b"KINDLING-STAGE name=kernel start=0.000000 end=0.900000\r\n"
          + START_NEW.encode() + b"\r\n"
          + b"hello\r\n"
          + READY.encode() + b"\r\n"
          + b'HYPEMAN-EXIT code=0 message="success"\r\n')


def complete_lines(stream: bytes) -> list[str]:
    return [l.decode().rstrip("\r") for l in stream.split(b"\n")[:-1]]


def state_of(record: MarkerRecord, agent_skipped=True) -> State:
    return derive_state(Observation(Vmm.RUNNING, program_started=record.program_started,
                                    agent_ready=record.agent_ready, agent_skipped=agent_skipped))


# --- lines across rotated files ----------------------------------------------

def test_split_in_two_files_at_every_byte():
    for cut in range(len(STREAM) + 1):
        older, newer = STREAM[:cut], STREAM[cut:]
        assert sorted(iter_lines([newer, older])) == \
            sorted(complete_lines(STREAM)), f"cut at byte {cut}"


def test_split_in_three_files_at_every_pair_of_bytes():
    for a in range(len(STREAM) + 1):
        for b in range(a, len(STREAM) + 1):
            chunks = [STREAM[b:], STREAM[a:b], STREAM[:a]]     # newest first
            assert sorted(iter_lines(chunks)) == \
                sorted(complete_lines(STREAM)), f"cuts at bytes {a} and {b}"


def test_unterminated_last_line_counts_only_when_final():
    chunks = [b"\nHYPEMAN-PROGRAM-START ts=2026-03-08T15:09:26.1", b"boot"]
    assert list(iter_lines(chunks)) == ["boot"]
    assert sorted(iter_lines(chunks, final=True)) == [
        "HYPEMAN-PROGRAM-START ts=2026-03-08T15:09:26.1", "boot"]
    # a newest file without any newline continues the older file's last line
    assert list(iter_lines([b"ld", b"a\nwor"])) == ["a"]
    assert sorted(iter_lines([b"ld", b"a\nwor"], final=True)) == ["a", "world"]


def test_marker_split_across_rotation_is_found(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    line = START_NEW.encode() + b"\r\n"
    (logs / "app.log.2").write_bytes(b"boot\r\n" + line[:10])           # "HYPEMAN-PR"
    (logs / "app.log.1").write_bytes(line[10:30])                        # no newline at all
    (logs / "app.log").write_bytes(line[30:] + b"hello\r\n")
    found = scan_logs(logs, since_ns=None)
    assert [m.kind for m in found] == [protocol.PROGRAM_START]
    assert found[0].ts == T0 + 5 * SEC
    assert state_of(markers.record_from(found, 1)) is State.RUNNING


# --- freshness, newest timestamp ---------------------------------------------

def write(path, data: bytes, mtime_ns: int):
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_stale_log_from_previous_boot_never_yields_running(tmp_path):
    """The previous boot's log, full of markers, was last modified before this boot
    started; the new boot has printed nothing yet."""
    logs = tmp_path
    boot_start = T0 + 100 * SEC
    write(logs / "app.log.1", STREAM, boot_start - 40 * SEC)
    write(logs / "app.log", b"", boot_start)
    record = markers.record_from(scan_logs(logs, since_ns=boot_start, final=True), 1)
    assert record.markers == {} and record.stages == []
    assert state_of(record) is State.INITIALIZING
    assert state_of(record, agent_skipped=False) is State.INITIALIZING


def test_stale_current_log_is_ignored_too(tmp_path):
    """Even app.log itself (say the rotation at start did not happen) is ignored when it
    was last modified before the start; one nanosecond later it counts."""
    boot_start = T0 + 100 * SEC
    write(tmp_path / "app.log", STREAM, boot_start - 1)
    assert scan_logs(tmp_path, since_ns=boot_start) == []
    os.utime(tmp_path / "app.log", ns=(boot_start, boot_start))
    assert {m.kind for m in scan_logs(tmp_path, since_ns=boot_start)} >= {
        protocol.PROGRAM_START, protocol.AGENT_READY}


def test_scan_stops_at_first_stale_file(tmp_path):
    boot_start = T0 + 100 * SEC
    write(tmp_path / "app.log", b"nothing yet\n", boot_start + SEC)
    write(tmp_path / "app.log.1", START_OLD.encode() + b"\n", boot_start - SEC)
    write(tmp_path / "app.log.2", START_NEW.encode() + b"\n", boot_start + 2 * SEC)  # bogus
    assert scan_logs(tmp_path, since_ns=boot_start) == []


def test_newest_timestamp_wins(tmp_path):
    boot_start = T0
    write(tmp_path / "app.log.1", START_NEW.encode() + b"\n" + READY.encode() + b"\n",
          boot_start + SEC)
    write(tmp_path / "app.log", START_OLD.encode() + b"\n", boot_start + 2 * SEC)
    record = markers.record_from(scan_logs(tmp_path, since_ns=boot_start), 1)
    assert record.get(protocol.PROGRAM_START).ts == T0 + 5 * SEC


def test_unparsable_timestamp_means_not_seen():
    found = scan([b"HYPEMAN-PROGRAM-START ts=yesterday mode=exec\n"
                  b"HYPEMAN-AGENT-READY\n"])
    record = markers.record_from(found, 1)
    assert not record.program_started and not record.agent_ready


def test_logger_prefix_and_cr():
    found = scan([b"[  2.1] init: " + START_NEW.encode() + b"\r\n"])
    assert markers.record_from(found, 1).program_started


def test_rotated_file_names(tmp_path):
    for name in ("app.log", "app.log.1", "app.log.10", "app.log.2", "app.log.new", "vmm.log",
                 "app.log.x"):
        (tmp_path / name).write_text("")
    assert [p.name for p in markers.app_logs_newest_first(tmp_path)] == [
        "app.log", "app.log.1", "app.log.2", "app.log.10"]


# --- the record: merge, persistence, throttle --------------------------------

def test_record_keeps_newest_and_first_sight():
    record = MarkerRecord()
    assert record.add(protocol.parse_line(START_OLD), seen_at=10)
    assert record.add(protocol.parse_line(START_NEW), seen_at=20)
    assert not record.add(protocol.parse_line(START_OLD), seen_at=30)
    assert record.get(protocol.PROGRAM_START).ts == T0 + 5 * SEC
    assert record.get(protocol.PROGRAM_START).seen_at == 20
    assert record.add(protocol.parse_line(START_NEW), seen_at=15)   # seen earlier elsewhere
    assert record.get(protocol.PROGRAM_START).seen_at == 15
    assert not record.add(protocol.parse_line(START_NEW), seen_at=16)


def test_record_exit_fatal_and_stages():
    record = MarkerRecord()
    assert record.add(protocol.parse_line(protocol.exit_line(3, "exit code 3")), 5)
    assert record.add(protocol.parse_line(protocol.exit_line(4, "exit code 4")), 6)
    assert record.get(protocol.EXIT).fields == {"code": "4", "message": "exit code 4"}
    assert not record.add(protocol.parse_line(protocol.exit_line(4, "exit code 4")), 7)
    assert record.get(protocol.EXIT).seen_at == 6
    assert record.add(protocol.parse_line(protocol.stage_line("kernel", 0, 1.5)), 5)
    assert not record.add(protocol.parse_line(protocol.stage_line("kernel", 0, 1.5)), 6)
    assert [s.name for s in record.stages] == ["kernel"]


def test_record_round_trips_through_json():
    """What a restarted shim hydrates from metadata.json."""
    record = markers.record_from(scan([STREAM]), seen_at=T0 + 7 * SEC)
    record.scanned_at = T0 + 8 * SEC
    again = MarkerRecord.from_json(record.to_json())
    assert again == record
    assert state_of(again, agent_skipped=False) is State.RUNNING
    merged = MarkerRecord()
    assert merged.merge(again) and merged == again
    assert not merged.merge(again)


def test_scan_at_most_once_a_second_while_nothing_found():
    record = MarkerRecord()
    assert scan_due(record, True, now_ns=T0)
    record.scanned_at = T0
    assert not scan_due(record, True, now_ns=T0 + SEC // 2)
    assert not scan_due(record, True, now_ns=T0 + SEC - 1)
    assert scan_due(record, True, now_ns=T0 + SEC)
    record.add(protocol.parse_line(START_NEW), seen_at=T0)
    assert not scan_due(record, True, now_ns=T0 + 10 * SEC)      # found: no more scans
    assert scan_due(record, False, now_ns=T0 + 10 * SEC)         # still needs AGENT-READY


# --- the last EXIT wins (console-only reading, as hypeman's host) ---------------

FAKE_EXIT = b'HYPEMAN-EXIT code=0 message="success"\r\n'
REAL_EXIT = b'HYPEMAN-EXIT code=3 message="exit code 3"\r\n'


def test_scan_returns_markers_in_printed_order_across_rotation():
    """The program printed an EXIT look-alike; PID 1's own EXIT came last.  At every cut
    of the log into two rotated files, the scan sees them in the printed order."""
    stream = STREAM.replace(FAKE_EXIT, b"") + FAKE_EXIT + b"bye\r\n" + REAL_EXIT
    for cut in range(len(stream) + 1):
        found = scan([stream[cut:], stream[:cut]], final=True)
        exits = [m.fields["code"] for m in found if m.kind == protocol.EXIT]
        assert exits == ["0", "3"], f"cut at byte {cut}"
        record = markers.record_from(found, 1)
        assert record.get(protocol.EXIT).fields["code"] == "3", f"cut at byte {cut}"


def test_last_exit_wins_in_the_logs(tmp_path):
    write(tmp_path / "app.log.1", b"boot\r\n" + FAKE_EXIT, T0)
    write(tmp_path / "app.log", b"more output\r\n" + REAL_EXIT, T0 + SEC)
    record = markers.record_from(scan_logs(tmp_path, since_ns=None, final=True), 1)
    assert record.get(protocol.EXIT).fields == {"code": "3", "message": "exit code 3"}


def test_a_later_scan_replaces_an_earlier_exit():
    """A scan while the program ran saw its look-alike; the final scan sees PID 1's."""
    meta_record = markers.record_from(scan([FAKE_EXIT]), 1)
    meta_record.merge(markers.record_from(scan([REAL_EXIT, FAKE_EXIT], final=True), 2))
    assert meta_record.get(protocol.EXIT).fields["code"] == "3"
