"""initsys/protocol.py: the wire contract shared by the guest and the host."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from initsys import protocol
from initsys.protocol import ConfigError, Marker

TS = 1_772_982_566_123_456_789          # 2026-03-08T15:09:26.123456789Z
TS_TEXT = "2026-03-08T15:09:26.123456789Z"


# --- config.json -------------------------------------------------------------

MINIMAL = {"entrypoint": ["/bin/true"]}


def test_config_defaults():
    c = protocol.validate_config(MINIMAL)
    assert c.argv == ["/bin/true"]
    assert c.cmd == []
    assert c.workdir == "/"
    assert c.env == {}
    assert c.network_enabled is False
    assert c.volume_mounts == []
    assert c.init_mode == "exec"
    assert c.skip_kernel_headers is False
    assert c.skip_guest_agent is False
    assert c.boot_strategy == "concurrent"
    assert c.hostname is None and c.mtu is None and c.hosts == {}
    assert c.program_env() == {"PATH": protocol.DEFAULT_PATH, "HOME": "/root"}


def test_config_env_overrides_path_and_home():
    c = protocol.validate_config({**MINIMAL, "env": {"PATH": "/x", "HOME": "/h", "A": "1"}})
    assert c.program_env() == {"PATH": "/x", "HOME": "/h", "A": "1"}


def test_config_null_means_default():
    c = protocol.validate_config({**MINIMAL, "workdir": None, "env": None})
    assert c.workdir == "/" and c.env == {}


def test_config_full_round_trip():
    obj = {
        "entrypoint": ["/bin/sh"], "cmd": ["-c", "echo hi"], "workdir": "/srv",
        "env": {"A": "b"}, "network_enabled": True, "guest_ip": "10.0.0.2",
        "guest_cidr": 24, "guest_gw": "10.0.0.1", "guest_dns": "10.0.0.1",
        "volume_mounts": [
            {"device": "/dev/vdd", "path": "/data", "mode": "rw"},
            {"device": "/dev/vde", "path": "/base", "mode": "overlay", "overlay_device": "/dev/vdf"},
        ],
        "init_mode": "exec", "skip_kernel_headers": True, "skip_guest_agent": True,
        "hostname": "box", "mtu": 1400, "hosts": {"db": "10.0.0.3"}, "boot_strategy": "sequential",
    }
    c = protocol.validate_config(obj)
    assert c.to_json() == obj
    assert protocol.parse_config(json.dumps(obj)).to_json() == obj


def test_config_unknown_fields_ignored():
    assert protocol.validate_config({**MINIMAL, "future_field": [1, 2]}).argv == ["/bin/true"]


NET = {"network_enabled": True, "guest_ip": "10.0.0.2", "guest_cidr": 24}
VOL = {"device": "/dev/vdd", "path": "/data", "mode": "rw"}

# (overrides on top of MINIMAL, the field the error must name)
BAD_FIELDS = [
    ({"entrypoint": "/bin/true"}, "entrypoint"),
    ({"entrypoint": [1]}, "entrypoint[0]"),
    ({"cmd": "x"}, "cmd"),
    ({"cmd": ["a", None]}, "cmd[1]"),
    ({"workdir": 5}, "workdir"),
    ({"workdir": "relative"}, "workdir"),
    ({"env": ["A=1"]}, "env"),
    ({"env": {"A": 1}}, "env.A"),
    ({"env": {"A=B": "1"}}, "env.A=B"),
    ({"network_enabled": "yes"}, "network_enabled"),
    ({**NET, "guest_ip": None}, "guest_ip"),
    ({**NET, "guest_ip": "300.1.1.1"}, "guest_ip"),
    ({**NET, "guest_ip": 167772162}, "guest_ip"),
    ({**NET, "guest_cidr": None}, "guest_cidr"),
    ({**NET, "guest_cidr": 33}, "guest_cidr"),
    ({**NET, "guest_cidr": "24"}, "guest_cidr"),
    ({**NET, "guest_cidr": True}, "guest_cidr"),
    ({"guest_gw": "10.0.0"}, "guest_gw"),
    ({"guest_dns": 8}, "guest_dns"),
    ({"volume_mounts": {}}, "volume_mounts"),
    ({"volume_mounts": ["/dev/vdd"]}, "volume_mounts[0]"),
    ({"volume_mounts": [{**VOL, "device": None}]}, "volume_mounts[0].device"),
    ({"volume_mounts": [VOL, {**VOL, "path": "data"}]}, "volume_mounts[1].path"),
    ({"volume_mounts": [{**VOL, "mode": "wr"}]}, "volume_mounts[0].mode"),
    ({"volume_mounts": [{**VOL, "mode": "overlay"}]}, "volume_mounts[0].overlay_device"),
    ({"init_mode": "runit"}, "init_mode"),
    ({"skip_kernel_headers": "true"}, "skip_kernel_headers"),
    ({"skip_guest_agent": 1}, "skip_guest_agent"),
    ({"hostname": 7}, "hostname"),
    ({"mtu": 10}, "mtu"),
    ({"mtu": 1500.0}, "mtu"),
    ({"hosts": ["db"]}, "hosts"),
    ({"hosts": {"db": 3}}, "hosts.db"),
    ({"boot_strategy": "fast"}, "boot_strategy"),
]


@pytest.mark.parametrize("overrides, field", BAD_FIELDS, ids=[f for _, f in BAD_FIELDS])
def test_config_error_names_field(overrides, field):
    with pytest.raises(ConfigError) as info:
        protocol.validate_config({**MINIMAL, **overrides})
    assert info.value.field == field
    assert repr(field) in str(info.value)


def test_config_systemd_mode_allows_empty_argv():
    assert protocol.validate_config({"init_mode": "systemd"}).argv == []


# --- config.json as hypeman's host writes it (Go's encoding/json of vmconfig.Config) ---------

# Go escapes <, > and & as \u003c, \u003e, \u0026; nil slices are null; workdir and init_mode
# have no omitempty (empty strings), bools with omitempty are left out when false.
HYPEMAN_CONFIG = (b'{"entrypoint":null,"cmd":null,"workdir":"","env":{"Q":"a\\u0026b \\u003cc\\u003e"},'
                  b'"network_enabled":true,"guest_ip":"10.200.0.2","guest_cidr":24,'
                  b'"guest_gw":"10.200.0.1","guest_dns":"10.200.0.1","volume_mounts":['
                  b'{"device":"","path":"/data","mode":"nfs","nfs_host":"10.200.0.1",'
                  b'"nfs_export":"/srv/vol-1"},{"device":"/dev/vdd","path":"/ro","mode":"ro"}],'
                  b'"init_mode":"","egress_proxy":{"enabled":true,"proxy_url":"http://10.200.0.1:3128",'
                  b'"ca_cert_pem":"-----BEGIN CERTIFICATE-----\\n"}}')


def test_hypeman_written_config_is_accepted():
    cfg = protocol.parse_config(HYPEMAN_CONFIG)
    assert cfg.argv == [] and cfg.workdir == "/" and cfg.init_mode == "exec"
    assert cfg.env == {"Q": "a&b <c>"}
    nfs, ro = cfg.volume_mounts
    assert (nfs.mode, nfs.nfs_host, nfs.nfs_export, nfs.path) == ("nfs", "10.200.0.1", "/srv/vol-1", "/data")
    assert nfs.to_json() == {"device": "", "path": "/data", "mode": "nfs", "nfs_host": "10.200.0.1",
                             "nfs_export": "/srv/vol-1"}
    assert (ro.device, ro.mode) == ("/dev/vdd", "ro")
    assert cfg.skip_guest_agent is False and cfg.skip_kernel_headers is False
    assert cfg.warnings == ["config.json field 'egress_proxy' is not supported and is ignored: "
                            "Kindling installs no egress-proxy CA certificate and sets no proxy"]
    assert "warnings" not in cfg.to_json()


def test_fields_kindling_does_not_know_are_warned_about():
    cfg = protocol.validate_config({"entrypoint": ["x"], "future_field": 1,
                                    "volume_mounts": [{"device": "/dev/vdd", "path": "/v",
                                                       "mode": "rw", "readahead": 4}]})
    assert cfg.warnings == [
        "config.json field 'future_field' is not known to Kindling and is ignored",
        "config.json field 'volume_mounts[0].readahead' is not known to Kindling and is ignored"]
    assert protocol.validate_config({"entrypoint": ["x"], "hostname": "h"}).warnings == []


@pytest.mark.parametrize("volume, field", [
    ({"device": "", "path": "/d", "mode": "nfs", "nfs_export": "/e"}, "volume_mounts[0].nfs_host"),
    ({"device": "", "path": "/d", "mode": "nfs", "nfs_host": "nfs.example", "nfs_export": "/e"},
     "volume_mounts[0].nfs_host"),
    ({"device": "", "path": "/d", "mode": "nfs", "nfs_host": "10.0.0.1"}, "volume_mounts[0].nfs_export"),
    ({"device": "", "path": "/d", "mode": "nfs", "nfs_host": "10.0.0.1", "nfs_export": "e"},
     "volume_mounts[0].nfs_export"),
    ({"device": "", "path": "/d", "mode": "rw"}, "volume_mounts[0].device"),
])
def test_bad_nfs_volume_names_the_field(volume, field):
    net = {"network_enabled": True, "guest_ip": "10.0.0.2", "guest_cidr": 24}
    with pytest.raises(ConfigError) as info:
        protocol.validate_config({"entrypoint": ["x"], **net, "volume_mounts": [volume]})
    assert info.value.field == field


def test_nfs_volume_needs_the_network():
    volume = {"device": "", "path": "/d", "mode": "nfs", "nfs_host": "10.0.0.1", "nfs_export": "/e"}
    with pytest.raises(ConfigError) as info:
        protocol.validate_config({"entrypoint": ["x"], "volume_mounts": [volume]})
    assert info.value.field == "volume_mounts[0].mode" and "network_enabled" in str(info.value)


def test_config_top_level_must_be_object():
    with pytest.raises(ConfigError) as info:
        protocol.validate_config(["entrypoint"])
    assert info.value.field == "(top level)"


@pytest.mark.parametrize("data", [b"{", b"\xff\xfe", b""])
def test_parse_config_bad_json(data):
    with pytest.raises(ConfigError) as info:
        protocol.parse_config(data)
    assert info.value.field == "(file)"


# --- timestamps --------------------------------------------------------------

def test_format_ts():
    assert protocol.format_ts(TS) == TS_TEXT
    assert protocol.format_ts(0) == "1970-01-01T00:00:00.000000000Z"


@pytest.mark.parametrize("text, ns", [
    (TS_TEXT, TS),
    ("2026-03-08T15:09:26Z", TS - 123_456_789),
    ("2026-03-08T15:09:26.5Z", TS - 123_456_789 + 500_000_000),
    ("2026-03-08T16:09:26.123456789+01:00", TS),
])
def test_parse_ts(text, ns):
    assert protocol.parse_ts(text) == ns


@pytest.mark.parametrize("text", ["", "garbage", "2026-13-08T15:09:26Z", "2026-03-08 15:09:26Z",
                                  "2026-03-08T15:09:26.123", "2026-03-08T25:00:00Z"])
def test_parse_ts_invalid(text):
    assert protocol.parse_ts(text) is None


@given(st.integers(min_value=0, max_value=253402300799_999_999_999))
def test_ts_round_trip(ns):
    assert protocol.parse_ts(protocol.format_ts(ns)) == ns


# --- sentinels ---------------------------------------------------------------

SENTINEL_CASES = [
    (protocol.program_start_line("exec", TS), protocol.PROGRAM_START,
     {"ts": TS_TEXT, "mode": "exec"}),
    (protocol.program_start_line("systemd", TS), protocol.PROGRAM_START,
     {"ts": TS_TEXT, "mode": "systemd"}),
    (protocol.agent_ready_line(TS), protocol.AGENT_READY, {"ts": TS_TEXT}),
    (protocol.headers_start_line(TS), protocol.HEADERS_START, {"ts": TS_TEXT}),
    (protocol.headers_ready_line(TS), protocol.HEADERS_READY, {"ts": TS_TEXT}),
    (protocol.headers_failed_line('tar: "x" failed\n', TS), protocol.HEADERS_FAILED,
     {"ts": TS_TEXT, "error": 'tar: "x" failed\n'}),
    (protocol.exit_line(7, "exit code 7"), protocol.EXIT, {"code": "7", "message": "exit code 7"}),
    (protocol.exit_line(137, "killed by signal 9 (SIGKILL) - OOM"), protocol.EXIT,
     {"code": "137", "message": "killed by signal 9 (SIGKILL) - OOM"}),
    (protocol.fatal_line("mount-root", 'mount /dev/vda: "no such device"'), protocol.FATAL,
     {"stage": "mount-root", "error": 'mount /dev/vda: "no such device"'}),
    (protocol.stage_line("kernel", 0.0, 0.912345), protocol.STAGE,
     {"name": "kernel", "start": "0.000000", "end": "0.912345"}),
    (protocol.checkpoint_line(TS), protocol.CHECKPOINT, {"ts": TS_TEXT}),
]


def test_every_sentinel_has_a_case():
    assert {kind for _, kind, _ in SENTINEL_CASES} == set(protocol.SENTINELS)


@pytest.mark.parametrize("prefix", ["", "[    1.234567] init: ", "app | "])
@pytest.mark.parametrize("suffix", ["", "\r", "\r\n", "\n"])
@pytest.mark.parametrize("line, kind, fields", SENTINEL_CASES,
                         ids=[c[0].split(" ")[0] + str(i) for i, c in enumerate(SENTINEL_CASES)])
def test_sentinel_round_trip(line, kind, fields, prefix, suffix):
    marker = protocol.parse_line(prefix + line + suffix)
    assert marker == Marker(kind, fields)
    assert protocol.is_sentinel_line(prefix + line + suffix)


def test_sentinel_lines_exact_text():
    assert protocol.program_start_line("exec", TS) == f"HYPEMAN-PROGRAM-START ts={TS_TEXT} mode=exec"
    assert protocol.exit_line(0, "success") == 'HYPEMAN-EXIT code=0 message="success"'
    assert protocol.fatal_line("config", "bad\tjson") == 'KINDLING-FATAL stage=config error="bad\\tjson"'
    assert protocol.stage_line("mounts", 1.5, 1.75) == "KINDLING-STAGE name=mounts start=1.500000 end=1.750000"


def test_marker_ts():
    assert protocol.parse_line(protocol.agent_ready_line(TS)).ts == TS
    assert protocol.parse_line("HYPEMAN-AGENT-READY ts=garbage").ts is None
    assert protocol.parse_line("HYPEMAN-AGENT-READY ts=2026-03-08T15:09:26.1Zjunk").ts is None
    assert protocol.parse_line("HYPEMAN-AGENT-READY nots").ts is None
    assert protocol.parse_line(protocol.exit_line(0, "success")).ts is None


def test_first_ts_wins():
    line = f"HYPEMAN-AGENT-READY ts={TS_TEXT} ts=1970-01-01T00:00:00Z"
    assert protocol.parse_line(line).ts == TS


@pytest.mark.parametrize("line", [
    "", "hello", "HYPEMAN-EXIT", "HYPEMAN-EXITcode=0", "xHYPEMAN-AGENT-READYts=1",
    "Run /init as init process",
])
def test_not_a_sentinel(line):
    assert protocol.parse_line(line) is None
    assert not protocol.is_sentinel_line(line)


# hypeman's host reads EXIT as: `code=` right after the prefix's one space, an integer
# (strconv.Atoi) up to the next space, then `message=` + a Go-quoted string if present
# (unquotable: the text without its quotes).  Kindling reads the same lines the same way.
@pytest.mark.parametrize("line, fields", [
    ('HYPEMAN-EXIT code=1 message="unterminated', {"code": "1", "message": "unterminated"}),
    ("HYPEMAN-EXIT code=42", {"code": "42", "message": ""}),
    ('HYPEMAN-EXIT code=+7 message="x"', {"code": "7", "message": "x"}),
    ('HYPEMAN-EXIT code=3  message="two spaces"', {"code": "3", "message": ""}),
    ('HYPEMAN-EXIT code=3 junk message="x"', {"code": "3", "message": ""}),
    ('2026-02-13T15:26:27Z [INFO] [hypeman-init:entrypoint] HYPEMAN-EXIT code=137 '
     'message="killed by signal 9 (killed) - OOM" \r', {"code": "137",
                                                     "message": "killed by signal 9 (killed) - OOM"}),
    ('HYPEMAN-EXIT code=0 message="\\u0026 \\"q\\""', {"code": "0", "message": '& "q"'}),
])
def test_exit_grammar_is_hypemans(line, fields):
    assert protocol.parse_line(line) == Marker(protocol.EXIT, fields)


@pytest.mark.parametrize("line", [
    'HYPEMAN-EXIT code=abc message="error"',           # not an integer
    'HYPEMAN-EXIT  code=0 message="success"',          # two spaces after the prefix
    'HYPEMAN-EXIT message="success" code=0',           # fields reversed
    'HYPEMAN-EXIT code= message="success"',            # no digits
    'HYPEMAN-EXIT code=1.5 message="x"',
    "HYPEMAN-EXIT code=99999999999999999999",          # not an int64
    'HYPEMAN-EXIT code=0x1 message="x"',
    # only the first occurrence of a prefix is read, as hypeman's strings.Index does
    'HYPEMAN-EXIT code=abc HYPEMAN-EXIT code=0 message="success"',
    "KINDLING-STAGE name=x start=1",
    "KINDLING-STAGE name=x start=1.0 end=2.0 extra=1",
    "KINDLING-STAGE end=2.0 name=x start=1.0",
    'KINDLING-FATAL error="x" stage=config',
    'KINDLING-FATAL stage=config error="unterminated',
])
def test_off_grammar_lines_are_program_output(line):
    assert protocol.parse_line(line) is None
    assert not protocol.is_sentinel_line(line)


def test_ts_is_the_first_ts_word_anywhere_after_the_prefix():
    """hypeman's host: strings.Fields after the prefix, the first word starting `ts=`."""
    line = f"HYPEMAN-PROGRAM-START  junk mode=exec ts={TS_TEXT}"
    assert protocol.parse_line(line).ts == TS
    assert protocol.parse_line(f"HYPEMAN-AGENT-READY x=\"a ts=1\" ts={TS_TEXT}").ts is None


# --- Go %q quoting -----------------------------------------------------------

# Outputs of Go's strconv.Quote / fmt's %q.
GO_QUOTED = [
    ("", '""'),
    ("success", '"success"'),
    ('a"b\\c\n\x01é', '"a\\"b\\\\c\\n\\x01é"'),
    ("\a\b\f\n\r\t\v", '"\\a\\b\\f\\n\\r\\t\\v"'),
    ("\x00\x7f", '"\\x00\\x7f"'),
    ("it's", '"it\'s"'),
    ("\u00a0", '"\\u00a0"'),         # no-break space: not printable for Go
    ("\u200b", '"\\u200b"'),         # zero-width space (Cf)
    ("\ue000", '"\\ue000"'),         # private use
    ("\U000e0001", '"\\U000e0001"'),  # language tag (Cf), outside the BMP
    ("☺ 日本 😀", '"☺ 日本 😀"'),
]


@pytest.mark.parametrize("text, quoted", GO_QUOTED)
def test_go_quote_matches_go(text, quoted):
    assert protocol.go_quote(text) == quoted
    assert protocol.go_unquote(quoted) == text


@given(st.text())
def test_go_quote_round_trip(text):
    assert protocol.go_unquote(protocol.go_quote(text)) == text


@given(st.text())
def test_go_quote_is_one_line(text):
    quoted = protocol.go_quote(text)
    assert "\n" not in quoted and "\r" not in quoted


def test_go_unquote_octal_and_single_quote_escape():
    assert protocol.go_unquote('"\\101\\\'"') == "A'"


@pytest.mark.parametrize("bad", ['x', '"abc', '"\\q"', '"\\x4"', '"\\u12"', '"\\08"', '"a"b', '"\\'])
def test_go_unquote_rejects(bad):
    with pytest.raises(ValueError):
        protocol.go_unquote(bad)


def test_go_unquote_prefix_returns_rest():
    assert protocol.go_unquote_prefix('"a b" rest') == ("a b", " rest")


# --- exit messages -----------------------------------------------------------

@pytest.mark.parametrize("args, kwargs, message", [
    ((0,), {}, "success"),
    ((127,), {}, "command not found"),
    ((126,), {}, "permission denied (command not executable)"),
    ((7,), {}, "exit code 7"),
    ((137,), {}, "exit code 137"),
    ((137,), {"signum": 9}, "killed by signal 9 (SIGKILL)"),
    ((137,), {"signum": 9, "oom": True}, "killed by signal 9 (SIGKILL) - OOM"),
    ((143,), {"signum": 15}, "killed by signal 15 (SIGTERM)"),
    ((128 + 64,), {"signum": 64}, "killed by signal 64 (SIG64)"),
])
def test_exit_message(args, kwargs, message):
    assert protocol.exit_message(*args, **kwargs) == message


@pytest.mark.parametrize("returncode, result", [(0, (0, None)), (7, (7, None)), (-9, (137, 9)),
                                                (-15, (143, 15))])
def test_exit_code_from_returncode(returncode, result):
    assert protocol.exit_code_from_returncode(returncode) == result
