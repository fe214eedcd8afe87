"""host_shim/timeline.py: the boot timeline from a console transcript, and its printing."""

import pytest

from host_shim import timeline
from host_shim.timeline import HostEvent, Stage, Timeline
from initsys import protocol

# A console transcript as QEMU writes it (CRLF line ends, kernel messages, a logger
# prefix on one stage line, program output, a malformed stage line).
TRANSCRIPT = (
    "[    0.000000] Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org)\r\n"
    "[    0.912345] Run /init as init process\r\n"
    "KINDLING-STAGE name=kernel start=0.000000 end=0.912345\r\n"
    "KINDLING-STAGE name=python start=0.912345 end=1.150000\r\n"
    "KINDLING-STAGE name=modules start=1.150000 end=1.500000\r\n"
    "[    1.6] init: KINDLING-STAGE name=mounts start=1.500000 end=1.620500\r\n"
    "KINDLING-STAGE name=broken start=oops end=1.7\r\n"
    "HYPEMAN-PROGRAM-START ts=2026-03-08T15:09:26.123456789Z mode=exec\r\n"
    "KINDLING-STAGE name=program-start start=1.620500 end=1.700000\r\n"
    "hello\r\n"
    'HYPEMAN-EXIT code=0 message="success"\r\n'
    "[    1.900000] reboot: Power down\r\n"
)


def test_stages_from_transcript():
    tl = Timeline.from_console(TRANSCRIPT.splitlines(keepends=True))
    assert [s.name for s in tl.stages] == ["kernel", "python", "modules", "mounts", "program-start"]
    assert tl.stages[0] == Stage("kernel", 0.0, 0.912345)
    assert tl.stages[3].duration == pytest.approx(0.1205)
    assert tl.host == []


def test_stage_from_marker_rejects_malformed():
    for fields in [{"name": "x", "start": "1"}, {"start": "1", "end": "2"},
                   {"name": "x", "start": "nan", "end": "1"}]:
        assert timeline.stage_from_marker(protocol.Marker(protocol.STAGE, fields)) is None
    exit_marker = protocol.parse_line('HYPEMAN-EXIT code=0 message=""')
    assert timeline.stage_from_marker(exit_marker) is None


def test_stage_line_round_trip():
    marker = protocol.parse_line(protocol.stage_line("mounts", 1.5, 1.6205))
    assert timeline.stage_from_marker(marker) == Stage("mounts", 1.5, 1.6205)


def test_host_events_first_wins():
    tl = Timeline()
    tl.mark(timeline.LAUNCH, 0.0)
    tl.mark(timeline.FIRST_CONSOLE_BYTE, 0.4)
    tl.mark(timeline.FIRST_CONSOLE_BYTE, 0.9)
    assert tl.host == [HostEvent("launch", 0.0), HostEvent("first console byte", 0.4)]
    assert tl.host_time(timeline.FIRST_CONSOLE_BYTE) == 0.4
    assert tl.host_time(timeline.EXIT_SEEN) is None


def test_format_timeline():
    tl = Timeline.from_console(TRANSCRIPT.splitlines())
    for name, at in [(timeline.LAUNCH, 0.0), (timeline.FIRST_CONSOLE_BYTE, 0.21),
                     (timeline.PROGRAM_START_SEEN, 1.83), (timeline.EXIT_SEEN, 2.1),
                     (timeline.QEMU_EXITED, 2.18)]:
        tl.mark(name, at)
    assert timeline.format_timeline(tl).splitlines() == [
        "boot timeline (guest clock, s):",
        "  stage             start  duration",
        "  kernel            0.000     0.912",
        "  python            0.912     0.238",
        "  modules           1.150     0.350",
        "  mounts            1.500     0.121",
        "  program-start     1.621     0.079",
        "host events (s since create/start):",
        "  launch                 0.000",
        "  first console byte     0.210",
        "  PROGRAM-START seen     1.830",
        "  EXIT seen              2.100",
        "  QEMU exited            2.180",
    ]


def test_format_empty_timeline():
    assert timeline.format_timeline(Timeline()) == ""


def test_to_json():
    tl = Timeline([Stage("kernel", 0.0, 1.0)], [HostEvent("launch", 0.0)])
    assert tl.to_json() == {"stages": [{"name": "kernel", "start": 0.0, "end": 1.0}],
                            "host": [{"name": "launch", "at": 0.0}]}
