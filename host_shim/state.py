"""Lifecycle states the host derives from the VMM and the markers (PROTOCOL.md §6)."""

import enum


class State(enum.StrEnum):
    CREATED = "Created"
    INITIALIZING = "Initializing"
    RUNNING = "Running"
    PAUSED = "Paused"
    SHUTDOWN = "Shutdown"
    STOPPED = "Stopped"
    STANDBY = "Standby"
    UNKNOWN = "Unknown"


def running_guest_state(program_started: bool, agent_ready: bool, agent_skipped: bool) -> State:
    """The state of a guest whose VMM is running: Running needs PROGRAM-START, and
    AGENT-READY too unless the config skips the agent."""
    if program_started and (agent_skipped or agent_ready):
        return State.RUNNING
    return State.INITIALIZING
