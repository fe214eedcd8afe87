"""The boot protocol: the one definition shared by the guest and the host.

Everything here is a wire contract (see ../shared/PROTOCOL.md and docs/protocol.md):
config.json fields and their validation, serial sentinel lines (format and
parse), Go-%q quoting, and the exit-code messages.

This module is imported by PID 1 on the boot critical path, where every import
costs ~13x what it costs on the host (TCG).  It therefore imports only `json`,
`re` and `time`, and uses plain classes instead of dataclasses.
"""

import json
import re
import time

# --- sentinels ---------------------------------------------------------------

PROGRAM_START = "HYPEMAN-PROGRAM-START"
AGENT_READY = "HYPEMAN-AGENT-READY"
HEADERS_START = "HYPEMAN-HEADERS-START"
HEADERS_READY = "HYPEMAN-HEADERS-READY"
HEADERS_FAILED = "HYPEMAN-HEADERS-FAILED"
EXIT = "HYPEMAN-EXIT"
# Kindling extensions (documented in docs/protocol.md).
FATAL = "KINDLING-FATAL"
STAGE = "KINDLING-STAGE"
CHECKPOINT = "KINDLING-CHECKPOINT"   # a template's guest waits to be snapshotted (kindling_checkpoint=1)

SENTINELS = (PROGRAM_START, AGENT_READY, HEADERS_START, HEADERS_READY,
             HEADERS_FAILED, EXIT, FATAL, STAGE, CHECKPOINT)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_HOME = "/root"


def format_ts(ns=None):
    """RFC 3339 UTC timestamp with nanoseconds: 2026-03-08T15:09:26.123456789Z."""
    if ns is None:
        ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    t = time.gmtime(secs)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{frac:09d}Z")


_TS_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(Z|[+-]\d{2}:\d{2})$")


def parse_ts(text):
    """Parse an RFC 3339 timestamp into integer nanoseconds since the epoch.

    Returns None when the text is not a valid timestamp ("not seen").
    """
    m = _TS_RE.match(text)
    if not m:
        return None
    year, mon, day, hour, minute, sec = (int(g) for g in m.groups()[:6])
    frac, zone = m.group(7) or "", m.group(8)
    if not (1 <= mon <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and sec < 61):
        return None
    import calendar  # host side only; kept out of the guest's import path
    try:
        secs = calendar.timegm((year, mon, day, hour, minute, sec, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        secs -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return secs * 1_000_000_000 + int(frac.ljust(9, "0") or 0)


# --- Go %q quoting -----------------------------------------------------------

_GO_ESCAPES = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r",
               "\t": r"\t", "\v": r"\v", "\\": "\\\\", '"': '\\"'}


def go_quote(text):
    """Quote like Go's %q / strconv.Quote: double quotes, backslash escapes."""
    out = ['"']
    for ch in text:
        esc = _GO_ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ch == " " or ch.isprintable():
            out.append(ch)
        else:
            cp = ord(ch)
            if cp < 0x80:
                out.append(f"\\x{cp:02x}")
            elif cp < 0x10000:
                out.append(f"\\u{cp:04x}")
            else:
                out.append(f"\\U{cp:08x}")
    out.append('"')
    return "".join(out)


_GO_UNESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
                 "v": "\v", "\\": "\\", '"': '"', "'": "'"}
_HEX_LEN = {"x": 2, "u": 4, "U": 8}


def go_unquote_prefix(text):
    """Parse a Go-quoted string at the start of `text`.

    Returns (value, rest). Raises ValueError on a malformed quoted string.
    """
    if not text.startswith('"'):
        raise ValueError("expected a double-quoted string")
    out = []
    i, n = 1, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            return "".join(out), text[i + 1:]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        if i + 1 >= n:
            break
        code = text[i + 1]
        if code in _GO_UNESCAPES:
            out.append(_GO_UNESCAPES[code])
            i += 2
        elif code in _HEX_LEN:
            digits = text[i + 2:i + 2 + _HEX_LEN[code]]
            if len(digits) != _HEX_LEN[code] or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise ValueError(f"bad \\{code} escape")
            out.append(chr(int(digits, 16)))
            i += 2 + len(digits)
        elif code in "01234567":
            digits = text[i + 1:i + 4]
            if len(digits) != 3 or not all(c in "01234567" for c in digits):
                raise ValueError("bad octal escape")
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            raise ValueError(f"unknown escape \\{code}")
    raise ValueError("unterminated quoted string")


def go_unquote(text):
    value, rest = go_unquote_prefix(text)
    if rest:
        raise ValueError("trailing characters after quoted string")
    return value


# --- sentinel lines ----------------------------------------------------------

def program_start_line(mode, ts=None):
    return f"{PROGRAM_START} ts={format_ts(ts)} mode={mode}"


def agent_ready_line(ts=None):
    return f"{AGENT_READY} ts={format_ts(ts)}"


def headers_start_line(ts=None):
    return f"{HEADERS_START} ts={format_ts(ts)}"


def headers_ready_line(ts=None):
    return f"{HEADERS_READY} ts={format_ts(ts)}"


def headers_failed_line(error, ts=None):
    return f"{HEADERS_FAILED} ts={format_ts(ts)} error={go_quote(error)}"


def checkpoint_line(ts=None):
    return f"{CHECKPOINT} ts={format_ts(ts)}"


def exit_line(code, message):
    return f"{EXIT} code={int(code)} message={go_quote(message)}"


def fatal_line(stage, error):
    return f"{FATAL} stage={stage} error={go_quote(error)}"


def stage_line(name, start, end):
    """Boot timeline line: a stage's start and end on the guest's CLOCK_MONOTONIC (seconds)."""
    return f"{STAGE} name={name} start={start:.6f} end={end:.6f}"


class Marker:
    """A sentinel found in a console line: its kind (the prefix) and its fields."""

    __slots__ = ("kind", "fields")

    def __init__(self, kind, fields):
        self.kind = kind
        self.fields = fields

    @property
    def ts(self):
        """Timestamp in ns since the epoch, or None when absent or unparsable."""
        raw = self.fields.get("ts")
        return parse_ts(raw) if raw is not None else None

    def __eq__(self, other):
        return isinstance(other, Marker) and (self.kind, self.fields) == (other.kind, other.fields)

    def __repr__(self):
        return f"Marker({self.kind!r}, {self.fields!r})"


def _parse_fields(text):
    """Parse `key=value key="quoted value" ...`; stops at the first malformed token."""
    fields = {}
    rest = text
    while True:
        rest = rest.lstrip(" ")
        if not rest:
            return fields
        eq = rest.find("=")
        if eq <= 0 or " " in rest[:eq]:
            return fields
        key, rest = rest[:eq], rest[eq + 1:]
        if rest.startswith('"'):
            try:
                value, rest = go_unquote_prefix(rest)
            except ValueError:
                return fields
        else:
            sp = rest.find(" ")
            value, rest = (rest, "") if sp < 0 else (rest[:sp], rest[sp:])
        fields.setdefault(key, value)


# The grammar of each marker after its prefix and one space (docs/protocol.md, "Marker
# grammar").  The HYPEMAN-* ones read exactly what hypeman's host reads, so a line one host
# takes for a marker the other takes for one too; anything else is program output.
_GO_SPACE = " \t\n\r\v\f\x85\xa0"       # what Go's strings.TrimSpace removes
_GO_ATOI = re.compile(r"[+-]?[0-9]+")          # strconv.Atoi: base 10, an int64
_STAGE_RE = re.compile(r"name=(\S+) start=([0-9]+\.[0-9]+) end=([0-9]+\.[0-9]+)")
_FATAL_RE = re.compile(r"stage=(\S+) error=(\".*)")


def _go_unquote_or_trim(text):
    """hypeman's reading of `message=`: strconv.Unquote, else the text without its quotes."""
    if len(text) >= 2 and text[0] == text[-1] == "`" and "`" not in text[1:-1]:
        return text[1:-1]
    try:
        return go_unquote(text)
    except ValueError:
        return text.strip('"')


def _exit_fields(rest):
    """`code=<int>` first, then optionally ` message=<quoted>`: hypeman's host reads the
    code up to the first space and the message only when `message=` follows that space."""
    if not rest.startswith("code="):
        return None
    raw, _, tail = rest[5:].partition(" ")
    if not _GO_ATOI.fullmatch(raw) or not -2**63 <= int(raw) < 2**63:
        return None
    message = _go_unquote_or_trim(tail[8:]) if tail.startswith("message=") else ""
    return {"code": str(int(raw)), "message": message}


def _ts_fields(rest):
    """A timestamped marker: its `ts` is the first whitespace-separated word starting
    `ts=` (hypeman's reading); other fields (`mode`, `error`) as key=value pairs."""
    fields = _parse_fields(rest)
    fields.pop("ts", None)
    for word in rest.split():
        if word.startswith("ts="):
            fields["ts"] = word[3:]
            break
    return fields


def _stage_fields(rest):
    m = _STAGE_RE.fullmatch(rest)
    return None if m is None else dict(zip(("name", "start", "end"), m.groups()))


def _fatal_fields(rest):
    m = _FATAL_RE.fullmatch(rest)
    if m is None:
        return None
    try:
        return {"stage": m.group(1), "error": go_unquote(m.group(2))}
    except ValueError:
        return None


_GRAMMAR = {PROGRAM_START: _ts_fields, AGENT_READY: _ts_fields, HEADERS_START: _ts_fields,
            HEADERS_READY: _ts_fields, HEADERS_FAILED: _ts_fields, EXIT: _exit_fields,
            FATAL: _fatal_fields, STAGE: _stage_fields, CHECKPOINT: _ts_fields}


def find_sentinel(line):
    """Where the first marker in a console line starts, and its Marker: (pos, Marker),
    or None.  The host uses `pos` to keep the text before it (a logger prefix, or
    program output without a final newline).  Like hypeman's host, only the first
    occurrence of each prefix is read, and trailing whitespace (`\\r`) is ignored; an
    occurrence that does not follow its marker's grammar is program output.
    """
    line = line.rstrip(_GO_SPACE)
    best = None
    for prefix in SENTINELS:
        pos = line.find(prefix + " ")
        if pos < 0 or (best is not None and pos > best[0]):
            continue
        fields = _GRAMMAR[prefix](line[pos + len(prefix) + 1:])
        if fields is not None:
            best = (pos, Marker(prefix, fields))
    return best


def parse_line(line):
    """Find a sentinel anywhere in a console line (a logger prefix may precede it).

    Returns a Marker or None.  A trailing `\\r`/newline is ignored.
    """
    found = find_sentinel(line)
    return None if found is None else found[1]


def is_sentinel_line(line):
    return parse_line(line) is not None


# --- exit codes --------------------------------------------------------------

_SIGNAL_NAMES = {
    1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT",
    7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2",
    13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM", 16: "SIGSTKFLT", 17: "SIGCHLD",
    18: "SIGCONT", 19: "SIGSTOP", 20: "SIGTSTP", 21: "SIGTTIN", 22: "SIGTTOU",
    23: "SIGURG", 24: "SIGXCPU", 25: "SIGXFSZ", 26: "SIGVTALRM", 27: "SIGPROF",
    28: "SIGWINCH", 29: "SIGIO", 30: "SIGPWR", 31: "SIGSYS",
}

EXIT_COMMAND_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126


def signal_name(signum):
    return _SIGNAL_NAMES.get(signum, f"SIG{signum}")


def exit_message(code, *, signum=None, oom=False):
    """The HYPEMAN-EXIT message for an exit code (PROTOCOL.md §3).

    `signum` is the signal that killed the program (then code is 128+signum).
    """
    if signum is not None:
        msg = f"killed by signal {signum} ({signal_name(signum)})"
        return msg + " - OOM" if oom else msg
    if code == 0:
        return "success"
    if code == EXIT_COMMAND_NOT_FOUND:
        return "command not found"
    if code == EXIT_NOT_EXECUTABLE:
        return "permission denied (command not executable)"
    return f"exit code {code}"


def exit_code_from_returncode(returncode):
    """Map a subprocess returncode (negative = killed by signal) to (code, signum)."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, None


# --- config.json -------------------------------------------------------------

class ConfigError(ValueError):
    """config.json is invalid: names the field and what was expected."""

    def __init__(self, field, expected, got=None):
        self.field = field
        self.expected = expected
        detail = f"config.json field {field!r}: expected {expected}"
        if got is not None:
            detail += f", got {_type_name(got)}"
        super().__init__(detail)


def _type_name(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


INIT_MODES = ("exec", "systemd")
VOLUME_MODES = ("ro", "rw", "overlay", "nfs")
STRATEGIES = ("concurrent", "sequential", "baseline")


class Volume:
    """One of volume_mounts.  `nfs`: the export `nfs_host:nfs_export` (device is empty)."""

    __slots__ = ("device", "path", "mode", "overlay_device", "nfs_host", "nfs_export")

    def __init__(self, device, path, mode, overlay_device=None, nfs_host=None, nfs_export=None):
        self.device = device
        self.path = path
        self.mode = mode
        self.overlay_device = overlay_device
        self.nfs_host = nfs_host
        self.nfs_export = nfs_export

    def to_json(self):
        d = {"device": self.device, "path": self.path, "mode": self.mode}
        for name in ("overlay_device", "nfs_host", "nfs_export"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        return d


# Every field hypeman's host writes (its vmconfig.Config), and the ones Kindling adds.
HYPEMAN_FIELDS = ("entrypoint", "cmd", "workdir", "env", "network_enabled", "guest_ip",
                  "guest_cidr", "guest_gw", "guest_dns", "volume_mounts", "init_mode",
                  "skip_kernel_headers", "skip_guest_agent", "egress_proxy")
KINDLING_FIELDS = ("hostname", "mtu", "hosts", "boot_strategy", "user")
VOLUME_FIELDS = ("device", "path", "mode", "overlay_device", "nfs_host", "nfs_export")
# Fields Kindling reads but does not act on: why, for the console warning.
NOT_HONOURED = {
    "egress_proxy": "Kindling installs no egress-proxy CA certificate and sets no proxy",
}


class Config:
    """A validated config.json (PROTOCOL.md §2) plus Kindling's optional extensions."""

    __slots__ = ("entrypoint", "cmd", "workdir", "env", "network_enabled", "guest_ip",
                 "guest_cidr", "guest_gw", "guest_dns", "volume_mounts", "init_mode",
                 "skip_kernel_headers", "skip_guest_agent", "hostname", "mtu", "hosts",
                 "boot_strategy", "user", "warnings")

    @property
    def argv(self):
        return list(self.entrypoint) + list(self.cmd)

    def program_env(self):
        """The program's environment: `env` with PATH and HOME defaulted."""
        env = dict(self.env)
        env.setdefault("PATH", DEFAULT_PATH)
        env.setdefault("HOME", DEFAULT_HOME)
        return env

    def to_json(self):
        d = {name: getattr(self, name) for name in self.__slots__ if name != "warnings"}
        d["volume_mounts"] = [v.to_json() for v in self.volume_mounts]
        return {k: v for k, v in d.items() if v is not None}


def _get(obj, field, kind, expected, default):
    if field not in obj or obj[field] is None:
        return default
    value = obj[field]
    if kind is int and isinstance(value, bool):
        raise ConfigError(field, expected, value)
    if not isinstance(value, kind):
        raise ConfigError(field, expected, value)
    return value


def _str_list(obj, field):
    value = _get(obj, field, list, "a list of strings", [])
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(f"{field}[{i}]", "a string", item)
    return value


def _ipv4(obj, field, required):
    value = _get(obj, field, str, "an IPv4 address string", None)
    if value is None:
        if required:
            raise ConfigError(field, "an IPv4 address (required when network_enabled)")
        return None
    parts = value.split(".")
    if len(parts) != 4 or not all(p.isdigit() and int(p) <= 255 and len(p) <= 3 for p in parts):
        raise ConfigError(field, f"an IPv4 address like 10.0.0.2, got {value!r}")
    return value


def _abs_path(field, value):
    if not value.startswith("/"):
        raise ConfigError(field, f"an absolute path, got {value!r}")
    if "\0" in value:
        raise ConfigError(field, "a path without NUL bytes")
    return value


def _volume(item, where, network_enabled):
    if not isinstance(item, dict):
        raise ConfigError(where, "an object {device, path, mode}", item)
    mode = _get(item, "mode", str, "one of ro, rw, overlay, nfs", "rw")
    if mode not in VOLUME_MODES:
        raise ConfigError(f"{where}.mode", f"one of ro, rw, overlay, nfs, got {mode!r}")
    device = _get(item, "device", str, "a device path string", None)
    if not device and mode != "nfs":    # hypeman writes "device": "" for nfs
        raise ConfigError(f"{where}.device", "a device path like /dev/vdd (required)")
    path = _get(item, "path", str, "an absolute path string", None)
    if path is None:
        raise ConfigError(f"{where}.path", "an absolute mount path (required)")
    _abs_path(f"{where}.path", path)
    overlay = _get(item, "overlay_device", str, "a device path string", None)
    if mode == "overlay" and overlay is None:
        raise ConfigError(f"{where}.overlay_device", "a device path (required for mode overlay)")
    if mode != "nfs":
        return Volume(device, path, mode, overlay if mode == "overlay" else None)
    host = _get(item, "nfs_host", str, "an IPv4 address string", None)
    if not host:
        raise ConfigError(f"{where}.nfs_host", "the NFS server's IPv4 address (required for mode nfs)")
    _ipv4({f"{where}.nfs_host": host}, f"{where}.nfs_host", True)
    export = _get(item, "nfs_export", str, "an absolute path string", None)
    if export is None:
        raise ConfigError(f"{where}.nfs_export", "the exported path (required for mode nfs)")
    _abs_path(f"{where}.nfs_export", export)
    if not network_enabled:
        raise ConfigError(f"{where}.mode", "nfs only with network_enabled (the export is reached over eth0)")
    return Volume("", path, mode, nfs_host=host, nfs_export=export)


def _volumes(obj, network_enabled):
    raw = _get(obj, "volume_mounts", list, "a list of {device, path, mode} objects", [])
    return [_volume(item, f"volume_mounts[{i}]", network_enabled) for i, item in enumerate(raw)]


def _warnings(obj):
    """A console line for each field Kindling does not honour (never a silent drop)."""
    lines = []
    for name, why in NOT_HONOURED.items():
        if obj.get(name) is not None:
            lines.append(f"config.json field {name!r} is not supported and is ignored: {why}")
    for name in obj:
        if name not in HYPEMAN_FIELDS and name not in KINDLING_FIELDS:
            lines.append(f"config.json field {name!r} is not known to Kindling and is ignored")
    for i, item in enumerate(obj.get("volume_mounts") or ()):
        for name in item:
            if name not in VOLUME_FIELDS:
                lines.append(f"config.json field 'volume_mounts[{i}].{name}' is not known to "
                             "Kindling and is ignored")
    return lines


def _extensions(obj, c):
    """Kindling's own fields (docs/protocol.md)."""
    c.hostname = _get(obj, "hostname", str, "a host name string", None)
    mtu = _get(obj, "mtu", int, "an integer MTU 68..65535", None)
    if mtu is not None and not 68 <= mtu <= 65535:
        raise ConfigError("mtu", f"an integer MTU 68..65535, got {mtu}")
    c.mtu = mtu
    hosts = _get(obj, "hosts", dict, "an object mapping host names to IPv4 addresses", {})
    for name, addr in hosts.items():
        if not isinstance(addr, str):
            raise ConfigError(f"hosts.{name}", "an IPv4 address string", addr)
    c.hosts = dict(hosts)
    strategies = f"one of {', '.join(STRATEGIES)}"
    c.boot_strategy = _get(obj, "boot_strategy", str, strategies, "concurrent")
    if c.boot_strategy not in STRATEGIES:
        raise ConfigError("boot_strategy", f"{strategies}, got {c.boot_strategy!r}")
    c.user = _get(obj, "user", str, "USER[:GROUP], names or numbers", None)
    if c.user is not None and (not c.user.split(":", 1)[0] or "\0" in c.user or c.user.count(":") > 1):
        raise ConfigError("user", f"USER[:GROUP], names or numbers, got {c.user!r}")


def validate_config(obj):
    """Validate a decoded config.json object; return a Config or raise ConfigError."""
    if not isinstance(obj, dict):
        raise ConfigError("(top level)", "a JSON object", obj)
    c = Config.__new__(Config)
    c.entrypoint = _str_list(obj, "entrypoint")
    c.cmd = _str_list(obj, "cmd")
    # hypeman writes "workdir": "" and "init_mode": "" when unset (no omitempty): the defaults
    c.workdir = _abs_path("workdir", _get(obj, "workdir", str, "an absolute path string", "") or "/")
    env = _get(obj, "env", dict, "an object mapping strings to strings", {})
    for key, value in env.items():
        if not isinstance(value, str):
            raise ConfigError(f"env.{key}", "a string value", value)
        if not key or "=" in key or "\0" in key:
            raise ConfigError(f"env.{key}", "a variable name without '=' or NUL")
    c.env = dict(env)
    c.network_enabled = _get(obj, "network_enabled", bool, "true or false", False)
    net = c.network_enabled
    c.guest_ip = _ipv4(obj, "guest_ip", net)
    cidr = _get(obj, "guest_cidr", int, "an integer prefix length 0..32", None)
    if cidr is None and net:
        raise ConfigError("guest_cidr", "an integer prefix length 0..32 (required when network_enabled)")
    if cidr is not None and not 0 <= cidr <= 32:
        raise ConfigError("guest_cidr", f"an integer prefix length 0..32, got {cidr}")
    c.guest_cidr = cidr
    c.guest_gw = _ipv4(obj, "guest_gw", False)
    c.guest_dns = _ipv4(obj, "guest_dns", False)
    c.volume_mounts = _volumes(obj, net)
    c.init_mode = _get(obj, "init_mode", str, "one of exec, systemd", "") or "exec"
    if c.init_mode not in INIT_MODES:
        raise ConfigError("init_mode", f"one of exec, systemd, got {c.init_mode!r}")
    c.skip_kernel_headers = _get(obj, "skip_kernel_headers", bool, "true or false", False)
    c.skip_guest_agent = _get(obj, "skip_guest_agent", bool, "true or false", False)
    _extensions(obj, c)
    # entrypoint and cmd both null or empty in exec mode: hypeman's init runs
    # `sh -c "cd WORKDIR && exec "`, which starts and exits 0; so does Kindling's
    # (initsys/program.py)
    c.warnings = _warnings(obj)
    return c


def parse_config(data):
    """Parse config.json bytes/str; raise ConfigError naming the problem."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError("(file)", f"valid JSON ({e})") from None
    return validate_config(obj)
