"""Boot timeline: every stage prints a KINDLING-STAGE line with its start and end.

Times are the guest's CLOCK_MONOTONIC in seconds, which starts near zero when
the kernel starts, so the host can lay the stages of one boot on one axis.
The stage a thread is in names the stage of a KINDLING-FATAL line.
"""

import threading
import time

from initsys import console, protocol

_where = threading.local()


def current():
    """The stage the calling thread is in ('init' before the first)."""
    return getattr(_where, "stage", "init")


def enter(name):
    _where.stage = name


class Stage:
    """Context manager timing one named stage and marking it current for this thread."""

    def __init__(self, name):
        self.name = name
        self.start = None

    def __enter__(self):
        enter(self.name)
        self.start = time.monotonic()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            record(self.name, self.start, time.monotonic())
        return False


def record(name, start, end):
    console.emit(protocol.stage_line(name, start, end))
