"""host_shim/state.py: the state model of PROTOCOL.md §6, row by row and transition by transition."""

import itertools

import pytest

from host_shim.errors import KindlingError
from host_shim.state import (ALLOWED, DERIVATION, QMP_STATUS, ForbiddenTransition, NotRunning,
                             Observation, State, Vmm, check_transition, derive_state,
                             is_allowed, matching_rows, require_running, running_guest_state,
                             transition_path)

S = State
LIFECYCLE = [s for s in State if s is not State.UNKNOWN]

# PROTOCOL.md §6, written out independently of the implementation's table:
# (vmm, snapshot, program_started, agent_ready, agent_skipped) -> state; None = any.
PROTOCOL_ROWS = [
    # no VMM process/socket: Standby if a snapshot exists, else Stopped
    (Vmm.ABSENT, True, None, None, None, S.STANDBY),
    (Vmm.ABSENT, False, None, None, None, S.STOPPED),
    # VMM unreachable: Unknown (with the error)
    (Vmm.UNREACHABLE, None, None, None, None, S.UNKNOWN),
    # created: Created
    (Vmm.CREATED, None, None, None, None, S.CREATED),
    # running, no PROGRAM-START: Initializing
    (Vmm.RUNNING, None, False, None, None, S.INITIALIZING),
    # running, PROGRAM-START, agent skipped: Running
    (Vmm.RUNNING, None, True, None, True, S.RUNNING),
    # running, PROGRAM-START, no AGENT-READY: Initializing
    (Vmm.RUNNING, None, True, False, False, S.INITIALIZING),
    # running, PROGRAM-START and AGENT-READY: Running
    (Vmm.RUNNING, None, True, True, False, S.RUNNING),
    # paused / shutdown: Paused / Shutdown
    (Vmm.PAUSED, None, None, None, None, S.PAUSED),
    (Vmm.SHUTDOWN, None, None, None, None, S.SHUTDOWN),
]


def expand(row):
    """Every concrete observation a protocol row covers."""
    vmm, *flags, state = row
    choices = [(f,) if f is not None else (False, True) for f in flags]
    for snapshot, started, ready, skipped in itertools.product(*choices):
        yield Observation(vmm, program_started=started, agent_ready=ready,
                          agent_skipped=skipped, snapshot=snapshot), state


CASES = [case for row in PROTOCOL_ROWS for case in expand(row)]


@pytest.mark.parametrize("obs, state", CASES, ids=[
    f"{o.vmm}-snap{int(o.snapshot)}-start{int(o.program_started)}-ready{int(o.agent_ready)}"
    f"-skip{int(o.agent_skipped)}" for o, _ in CASES])
def test_every_row_of_the_protocol_table(obs, state):
    assert derive_state(obs) is state


def test_the_table_is_complete_and_unambiguous():
    every = [Observation(vmm, program_started=a, agent_ready=b, agent_skipped=c, snapshot=d)
             for vmm in Vmm for a, b, c, d in itertools.product((False, True), repeat=4)]
    assert len(every) == len(Vmm) * 16 == len(CASES)
    for obs in every:
        assert len(matching_rows(obs)) == 1, obs


def test_every_table_row_is_used():
    used = {matching_rows(obs)[0] for obs, _ in CASES}
    assert used == set(range(len(DERIVATION)))


def test_running_guest_state_needs_agent_unless_skipped():
    assert running_guest_state(True, False, True) is S.RUNNING
    assert running_guest_state(True, False, False) is S.INITIALIZING
    assert running_guest_state(True, True, False) is S.RUNNING
    assert running_guest_state(False, True, False) is S.INITIALIZING
    assert running_guest_state(False, True, True) is S.INITIALIZING


# --- transitions -------------------------------------------------------------

PROTOCOL_ALLOWED = {
    ("Created", "Initializing"), ("Created", "Running"), ("Created", "Shutdown"),
    ("Initializing", "Running"), ("Initializing", "Shutdown"),
    ("Running", "Paused"), ("Running", "Shutdown"),
    ("Paused", "Running"), ("Paused", "Shutdown"), ("Paused", "Standby"),
    ("Shutdown", "Running"), ("Shutdown", "Stopped"),
    ("Stopped", "Created"),
    ("Standby", "Paused"), ("Standby", "Stopped"),
}
PAIRS = [(a, b) for a in LIFECYCLE for b in LIFECYCLE if a is not b]
FORBIDDEN = [(a, b) for a, b in PAIRS if (a, b) not in PROTOCOL_ALLOWED]


def test_allowed_table_matches_the_protocol():
    assert {(str(a), str(b)) for a, targets in ALLOWED.items() for b in targets} \
        == PROTOCOL_ALLOWED


@pytest.mark.parametrize("old, new", sorted(PROTOCOL_ALLOWED))
def test_allowed_transition(old, new):
    assert is_allowed(State(old), State(new))
    check_transition(State(old), State(new))
    assert transition_path(State(old), State(new)) == [State(new)]


@pytest.mark.parametrize("old, new", FORBIDDEN, ids=[f"{a}->{b}" for a, b in FORBIDDEN])
def test_forbidden_transition(old, new):
    assert not is_allowed(old, new)
    with pytest.raises(ForbiddenTransition) as info:
        check_transition(old, new)
    assert f"forbidden state transition {old} -> {new}" in info.value.message
    assert isinstance(info.value, KindlingError)


def test_forbidden_count():
    # 7 lifecycle states: 42 ordered pairs, 15 allowed.
    assert (len(PAIRS), len(FORBIDDEN)) == (42, 27)


# Observations are samples: states in between are filled in only through the ones
# an instance must have passed (a VMM that is gone shut down first; one that exists
# was created first).  Everything else stays forbidden.
INFERRED = {
    ("Initializing", "Stopped"): ["Shutdown", "Stopped"],
    ("Running", "Stopped"): ["Shutdown", "Stopped"],
    ("Created", "Stopped"): ["Shutdown", "Stopped"],
    ("Paused", "Stopped"): ["Shutdown", "Stopped"],
    ("Stopped", "Initializing"): ["Created", "Initializing"],
    ("Stopped", "Running"): ["Created", "Running"],
    ("Stopped", "Shutdown"): ["Created", "Shutdown"],
}


@pytest.mark.parametrize("old, new", FORBIDDEN, ids=[f"{a}->{b}" for a, b in FORBIDDEN])
def test_transition_path_for_non_adjacent_observations(old, new):
    expected = INFERRED.get((str(old), str(new)))
    if expected is None:
        with pytest.raises(ForbiddenTransition):
            transition_path(old, new)
    else:
        assert transition_path(old, new) == [State(s) for s in expected]


def test_transition_path_same_state_and_unknown():
    assert transition_path(S.RUNNING, S.RUNNING) == []
    assert transition_path(None, S.STOPPED) == [S.STOPPED]
    assert transition_path(S.RUNNING, S.UNKNOWN) == [S.UNKNOWN]
    assert transition_path(S.UNKNOWN, S.RUNNING) == [S.RUNNING]
    assert transition_path(S.UNKNOWN, S.UNKNOWN) == []


def test_qmp_run_states():
    assert QMP_STATUS["prelaunch"] is Vmm.CREATED
    assert QMP_STATUS["running"] is Vmm.RUNNING
    assert QMP_STATUS["paused"] is Vmm.PAUSED
    assert QMP_STATUS["shutdown"] is Vmm.SHUTDOWN
    # every RunState of QEMU 7.2's qapi/run-state.json is mapped
    assert set(QMP_STATUS) == {
        "debug", "inmigrate", "internal-error", "io-error", "paused", "postmigrate",
        "prelaunch", "finish-migrate", "restore-vm", "running", "save-vm", "shutdown",
        "suspended", "watchdog", "guest-panicked", "colo"}


# --- the guard ---------------------------------------------------------------

def test_guard_refuses_while_initializing():
    with pytest.raises(NotRunning) as info:
        require_running("web", S.INITIALIZING, "exec")
    assert info.value.message == "instance web is Initializing; try `kindling wait web --for running`"
    assert info.value.state is S.INITIALIZING
    assert "exec needs a Running guest" in info.value.hint


@pytest.mark.parametrize("state, advice", [
    (S.CREATED, "try `kindling wait vm1 --for running`"),
    (S.STOPPED, "start it with `kindling start vm1`"),
    (S.SHUTDOWN, "start it with `kindling start vm1`"),
    (S.PAUSED, "resume it with `kindling resume vm1`"),
    (S.STANDBY, "restore it with `kindling restore vm1`"),
    (S.UNKNOWN, "copy needs a Running guest"),
])
def test_guard_other_states(state, advice):
    with pytest.raises(NotRunning, match=f"instance vm1 is {state}") as info:
        require_running("vm1", state, "copy")
    assert advice in info.value.message


def test_guard_lets_running_through():
    assert require_running("vm1", S.RUNNING, "stat") is None      # no NotRunning raised
