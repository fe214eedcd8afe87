"""The control channel on the host: lifecycle facts the program cannot forge.

The guest side is initsys/control.py: PID 1 holds the virtio-serial port
`org.kindling.control.0` and writes every marker there, first, then on the
serial console as the protocol says.  Here the port's host end is a QEMU
`file` chardev, `logs/control.log` (QEMU truncates it at each launch: it is
the current boot's).  A file rather than a socket: nothing on the host must
stay connected (a guest write to an unconnected port blocks) and the markers
outlive the shim, like the console log.

When an instance has the port (`enabled(argv)`), its markers -- and so its
state, its exit code, its stages -- come from control.log alone
(`trusted_markers`).  A marker-shaped line on the console is PID 1's only when
the control channel holds the identical line; otherwise it is the program's
output and is shown like any other (`split_console` for a complete log,
`ConsoleGate` while following one).  A line the program can copy byte for
byte is only an EXIT (or FATAL) line: those are decided once the log is
complete, and of several identical ones the last is PID 1's (it prints EXIT
after the program ended).  Timestamped markers carry nanoseconds, stages
microseconds: a copy of a line not yet printed cannot be made in advance.

Ordering: the guest writes the control line before the console line, and
under TCG QEMU handles both writes synchronously in the vCPU, so a console
marker line read from the log is normally vouched for already; CONTROL_LAG
covers a VMM that handles the virtio notification asynchronously (KVM's
ioeventfd).  Before PID 1 opened the port (its first lines are replayed there
once it does) no program can have run, so console markers are held, not judged.
"""

import os
from collections import Counter, deque
from collections.abc import Iterable
from pathlib import Path

from initsys import control as guest_control
from initsys import protocol
from initsys.protocol import Marker

from . import qemu
from .console import LineSplitter

PORT_NAME = guest_control.NAME
KERNEL_ARG = "kindling_control=1"
LOG_NAME = "control.log"
CHARDEV = "ctl0"
CONTROL_LAG = 0.5          # s a console marker line may precede its control line
COPYABLE = (protocol.EXIT, protocol.FATAL)     # markers without a timestamp


def log_path(logs_dir: Path) -> Path:
    return Path(logs_dir) / LOG_NAME


def qemu_args(logs_dir: Path) -> list[str]:
    """The port (on the machine's virtio-serial bus, which the caller adds once)."""
    path = qemu.opt_value(log_path(logs_dir))
    return ["-chardev", f"file,id={CHARDEV},path={path}",
            "-device", f"virtserialport,chardev={CHARDEV},name={PORT_NAME}"]


def enabled(argv: Iterable[str]) -> bool:
    """Whether an instance's QEMU command line attaches the control port."""
    return any(f"name={PORT_NAME}" in arg for arg in argv)


def candidates(line: str) -> list[tuple[int, str]]:
    """Every place a marker may start in a console line, with the text from there to the
    end (what a control line must equal).  More than one when the program's last
    output, without a newline, looked like a marker and PID 1's line followed it."""
    line = line.rstrip("\r")
    found = []
    for prefix in protocol.SENTINELS:
        at = line.find(prefix + " ")
        while at >= 0:
            found.append((at, line[at:]))
            at = line.find(prefix + " ", at + 1)
    return sorted(found)


def read_lines(path: Path, since_ns: int | None = None, *, final: bool = False) -> list[str]:
    """The complete lines of control.log; none when it is older than the boot
    (`since_ns`, the filesystem's clock).  `final`: QEMU has exited."""
    try:
        with open(path, "rb") as f:
            if since_ns is not None and os.fstat(f.fileno()).st_mtime_ns < since_ns:
                return []
            data = f.read()
    except FileNotFoundError:
        return []
    splitter = LineSplitter()
    return splitter.feed(data) + (splitter.flush() if final else [])


def trusted_markers(control_lines: Iterable[str]) -> list[Marker]:
    """The markers of the control channel, in order.  Only whole marker lines count."""
    found = []
    for line in control_lines:
        at = protocol.find_sentinel(line)
        if at is not None and at[0] == 0:
            found.append(at[1])
    return found


def _match(line: str, unmatched: Counter) -> int | None:
    """Where PID 1's marker starts in `line` (consumed from `unmatched`), or None."""
    for at, text in candidates(line):
        if unmatched[text] > 0:
            unmatched[text] -= 1
            return at
    return None


def real_markers(console_lines: list[str], control_lines: Iterable[str]) -> list[int | None]:
    """For each console line, where one of PID 1's markers starts in it (None: no
    marker of PID 1's): matched to an identical control line, the last identical
    console line first."""
    unmatched = Counter(control_lines)
    real: list[int | None] = [None] * len(console_lines)
    for i in range(len(console_lines) - 1, -1, -1):
        real[i] = _match(console_lines[i], unmatched)
    return real


def split_console(console_lines: list[str], control_lines: Iterable[str]) -> list[str]:
    """The console as a user sees it: PID 1's markers removed (text before one on its
    line kept); every other line, marker-shaped or not, kept whole."""
    shown = []
    for line, at in zip(console_lines, real_markers(console_lines, control_lines)):
        if at is None:
            shown.append(line.rstrip("\r"))
        elif prefix := line[:at].rstrip():
            shown.append(prefix)
    return shown


class ConsoleGate:
    """Following a console: which lines carry PID 1's markers, decided as soon as the
    control channel allows, in console order.

    `push` console lines, `vouch` control lines as they arrive, then `decide(now)`
    returns [(line, at)] for the lines decided, `at` being where PID 1's marker
    starts in the line or None (a blocked line holds back the ones after it, so the
    order is kept).  `decide(now, final=True)` once both logs are complete decides
    everything.
    """

    def __init__(self):
        self.unmatched: Counter[str] = Counter()
        self.control_lines = 0
        self.pending: deque[list] = deque()     # [line, candidates, deadline|None]

    def vouch(self, control_lines: Iterable[str]) -> None:
        for line in control_lines:
            self.control_lines += 1
            self.unmatched[line] += 1

    def push(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.pending.append([line, candidates(line), None])

    def decide(self, now: float, final: bool = False) -> list[tuple[str, int | None]]:
        decided = []
        while self.pending:
            item = self.pending[0]
            ready, at = self._judge(item, now, final)
            if not ready:
                break
            self.pending.popleft()
            decided.append((item[0], at))
        return decided

    def take(self, batch, now: float) -> list[tuple[str, int | None]]:
        """One follower batch (host_shim/follow.py Batch: its console `lines`, its
        `control` lines, `final`) in, the console lines decided so far out."""
        self.vouch(batch.control)
        self.push(batch.lines)
        return self.decide(now, batch.final)

    def held_markers(self) -> list[Marker]:
        """The markers of the console lines not decided yet."""
        return [m for line, found, _ in self.pending
                if found and (m := protocol.parse_line(line)) is not None]

    def _judge(self, item: list, now: float, final: bool) -> tuple[bool, int | None]:
        """(decided, where PID 1's marker starts or None); (False, None): not yet."""
        line, found, deadline = item
        if not found:
            return True, None
        for at, text in found:
            if self.unmatched[text] <= 0:
                continue
            if text.startswith(COPYABLE):
                if not final:
                    return False, None  # the last identical line is PID 1's: wait for the end
                if any(text == t for later in list(self.pending)[1:] for _, t in later[1]):
                    continue
            self.unmatched[text] -= 1
            return True, at
        if final:
            return True, None
        if self.control_lines == 0:
            return False, None      # PID 1 has not opened the port: no program has run
        if deadline is None:
            item[2] = deadline = now + CONTROL_LAG
        return now >= deadline, None


class ControlReader:
    """control.log read as it grows (QEMU writes it; it is never rotated)."""

    def __init__(self, logs_dir: Path):
        self.path = log_path(logs_dir)
        self.splitter = LineSplitter()
        self.fd: int | None = None

    def poll(self, final: bool = False) -> list[str]:
        if self.fd is None:
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return []
        if os.fstat(self.fd).st_size < os.lseek(self.fd, 0, os.SEEK_CUR):
            os.lseek(self.fd, 0, os.SEEK_SET)       # QEMU truncated it: a new launch
            self.splitter = LineSplitter()
        chunks = []
        while data := os.read(self.fd, 1 << 16):
            chunks.append(data)
        lines = self.splitter.feed(b"".join(chunks))
        return lines + (self.splitter.flush() if final else [])

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
