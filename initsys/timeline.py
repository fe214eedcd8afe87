"""Boot timeline: every stage prints a KINDLING-STAGE line with its start and end.

Times are the guest's CLOCK_MONOTONIC in seconds, which starts near zero when
the kernel starts, so the host can lay the stages of one boot on one axis.
"""

import time

from initsys import console, protocol


class Stage:
    """Context manager timing one named stage; `current` names the stage for FATAL lines."""

    current = "init"

    def __init__(self, name):
        self.name = name
        self.start = None

    def __enter__(self):
        Stage.current = self.name
        self.start = time.monotonic()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            record(self.name, self.start, time.monotonic())
        return False


def record(name, start, end):
    console.emit(protocol.stage_line(name, start, end))
