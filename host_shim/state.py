"""Lifecycle states the host derives from the VMM and the markers (PROTOCOL.md §6).

Three pure pieces, each a table:

* `DERIVATION`: what the VMM says + which markers were seen -> the state, one row
  per row of PROTOCOL.md §6, first match wins; `derive_state` walks it.
* `ALLOWED`: the transitions table.  `transition_path` turns two successive
  observations into the states to record, enforcing it.
* `QMP_STATUS`: QEMU's `query-status` run states -> what the VMM says.

Plus the guard for operations that need a running guest (`require_running`).
"""

import enum
from collections import deque
from dataclasses import dataclass

from .errors import Conflict


class State(enum.StrEnum):
    CREATED = "Created"
    INITIALIZING = "Initializing"
    RUNNING = "Running"
    PAUSED = "Paused"
    SHUTDOWN = "Shutdown"
    STOPPED = "Stopped"
    STANDBY = "Standby"
    UNKNOWN = "Unknown"


class Vmm(enum.StrEnum):
    """What the VMM says (the first column of PROTOCOL.md §6)."""
    ABSENT = "absent"            # no VMM process/socket
    UNREACHABLE = "unreachable"  # the process is there, QMP does not answer
    CREATED = "created"          # QEMU started with -S, not yet `cont`inued
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"


# QMP `query-status` -> Vmm.  QEMU exits on guest shutdown (-no-reboot, no -no-shutdown),
# so `shutdown` is seen only briefly; states a VM can resume from count as paused.
QMP_STATUS: dict[str, Vmm] = {
    "prelaunch": Vmm.CREATED,
    "inmigrate": Vmm.CREATED,
    "running": Vmm.RUNNING,
    "paused": Vmm.PAUSED,
    "suspended": Vmm.PAUSED,
    "debug": Vmm.PAUSED,
    "io-error": Vmm.PAUSED,
    "watchdog": Vmm.PAUSED,
    "postmigrate": Vmm.PAUSED,
    "finish-migrate": Vmm.PAUSED,
    "save-vm": Vmm.PAUSED,
    "restore-vm": Vmm.PAUSED,
    "colo": Vmm.PAUSED,
    "shutdown": Vmm.SHUTDOWN,
    "guest-panicked": Vmm.SHUTDOWN,
    "internal-error": Vmm.SHUTDOWN,
}


@dataclass(frozen=True)
class Observation:
    """Everything the state depends on."""
    vmm: Vmm
    program_started: bool = False   # HYPEMAN-PROGRAM-START seen (with a valid ts)
    agent_ready: bool = False       # HYPEMAN-AGENT-READY seen (with a valid ts)
    agent_skipped: bool = False     # config.json skip_guest_agent
    snapshot: bool = False          # a snapshot exists (host_shim/snapshot.py `exists`)


ANY = None

# PROTOCOL.md §6, row by row: (vmm, snapshot, program_started, agent_ready, agent_skipped) -> state.
# ANY matches either value.  The first matching row wins; tests check that exactly one matches.
DERIVATION: tuple[tuple[Vmm, bool | None, bool | None, bool | None, bool | None, State], ...] = (
    (Vmm.ABSENT,      True,  ANY,   ANY,   ANY,   State.STANDBY),
    (Vmm.ABSENT,      False, ANY,   ANY,   ANY,   State.STOPPED),
    (Vmm.UNREACHABLE, ANY,   ANY,   ANY,   ANY,   State.UNKNOWN),
    (Vmm.CREATED,     ANY,   ANY,   ANY,   ANY,   State.CREATED),
    (Vmm.RUNNING,     ANY,   False, ANY,   ANY,   State.INITIALIZING),
    (Vmm.RUNNING,     ANY,   True,  ANY,   True,  State.RUNNING),
    (Vmm.RUNNING,     ANY,   True,  False, False, State.INITIALIZING),
    (Vmm.RUNNING,     ANY,   True,  True,  False, State.RUNNING),
    (Vmm.PAUSED,      ANY,   ANY,   ANY,   ANY,   State.PAUSED),
    (Vmm.SHUTDOWN,    ANY,   ANY,   ANY,   ANY,   State.SHUTDOWN),
)


def matching_rows(o: Observation) -> list[int]:
    values = (o.vmm, o.snapshot, o.program_started, o.agent_ready, o.agent_skipped)
    return [i for i, row in enumerate(DERIVATION)
            if all(want is ANY or want == got for want, got in zip(row[:5], values))]


def derive_state(o: Observation) -> State:
    rows = matching_rows(o)
    if not rows:
        raise ValueError(f"no state for {o}")  # the table is complete; tests prove it
    return DERIVATION[rows[0]][5]


def running_guest_state(program_started: bool, agent_ready: bool, agent_skipped: bool) -> State:
    """The state of a guest whose VMM is running."""
    return derive_state(Observation(Vmm.RUNNING, program_started=program_started,
                                    agent_ready=agent_ready, agent_skipped=agent_skipped))


# --- transitions -------------------------------------------------------------

ALLOWED: dict[State, frozenset[State]] = {
    State.CREATED: frozenset({State.INITIALIZING, State.RUNNING, State.SHUTDOWN}),
    State.INITIALIZING: frozenset({State.RUNNING, State.SHUTDOWN}),
    State.RUNNING: frozenset({State.PAUSED, State.SHUTDOWN}),
    State.PAUSED: frozenset({State.RUNNING, State.SHUTDOWN, State.STANDBY}),
    State.SHUTDOWN: frozenset({State.RUNNING, State.STOPPED}),
    State.STOPPED: frozenset({State.CREATED}),
    State.STANDBY: frozenset({State.PAUSED, State.STOPPED}),
}

# States an instance passes through without the host seeing them, between two
# observations: a VMM that is gone has shut down first; a VMM that exists was
# created first.  Only these are ever filled in.
INFERABLE = frozenset({State.SHUTDOWN, State.CREATED})

# States in which the VMM exists: stop and delete stop it first.
VMM_ACTIVE = frozenset({State.CREATED, State.INITIALIZING, State.RUNNING, State.PAUSED,
                        State.SHUTDOWN, State.UNKNOWN})


class ForbiddenTransition(Conflict):
    def __init__(self, old: State, new: State):
        allowed = ", ".join(sorted(ALLOWED.get(old, ()))) or "nothing"
        super().__init__(f"forbidden state transition {old} -> {new} "
                         f"(from {old} the state model allows: {allowed})")
        self.old = old
        self.new = new


def is_allowed(old: State, new: State) -> bool:
    return new in ALLOWED.get(old, frozenset())


def check_transition(old: State, new: State) -> None:
    if not is_allowed(old, new):
        raise ForbiddenTransition(old, new)


def transition_path(old: State | None, new: State) -> list[State]:
    """The states to record when the last known state was `old` and `new` is observed.

    [] when nothing changed, [new] for an allowed transition, and the shortest path
    through INFERABLE states when observations were too far apart to see them
    (Running -> Stopped records Shutdown, Stopped). `Unknown` is not a lifecycle
    state: entering it is always possible, and leaving it is checked against the
    state before it (the caller passes that as `old`).  Raises ForbiddenTransition
    when the table allows no path.
    """
    if old is None or new is State.UNKNOWN or old is State.UNKNOWN:
        return [] if old == new else [new]
    if old == new:
        return []
    # Breadth-first over allowed transitions, intermediate states limited to INFERABLE.
    queue = deque([[old]])
    seen = {old}
    while queue:
        path = queue.popleft()
        for nxt in sorted(ALLOWED[path[-1]]):
            if nxt == new:
                return path[1:] + [new]
            if nxt in INFERABLE and nxt not in seen:
                seen.add(nxt)
                queue.append(path + [nxt])
    raise ForbiddenTransition(old, new)


# --- the guard for operations that need a running guest ----------------------

class NotRunning(Conflict):
    """An operation that needs a running guest was asked of an instance that is not Running."""

    def __init__(self, message: str, hint: str | None, state: State):
        super().__init__(message, hint=hint)
        self.state = state


def require_running(ref: str, state: State, operation: str = "this operation") -> None:
    """Refuse `operation` unless the instance is Running.

    For the agent's operations (exec, copy, stat): `Initializing` counts as
    VMM-active, but the guest cannot serve them yet.
    """
    if state is State.RUNNING:
        return
    if state in (State.INITIALIZING, State.CREATED):
        raise NotRunning(f"instance {ref} is {state}; try `kindling wait {ref} --for running`",
                         hint=f"{operation} needs a Running guest", state=state)
    if state is State.STANDBY:
        raise NotRunning(f"instance {ref} is Standby; restore it with `kindling restore {ref}`",
                         hint=f"{operation} needs a Running guest", state=state)
    if state is State.PAUSED:
        raise NotRunning(f"instance {ref} is Paused; resume it with `kindling resume {ref}`",
                         hint=f"{operation} needs a Running guest", state=state)
    if state in (State.STOPPED, State.SHUTDOWN):
        raise NotRunning(f"instance {ref} is {state}; start it with `kindling start {ref}`",
                         hint=f"{operation} needs a Running guest", state=state)
    raise NotRunning(f"instance {ref} is {state}; {operation} needs a Running guest",
                     hint=f"see `kindling inspect {ref}`", state=state)
