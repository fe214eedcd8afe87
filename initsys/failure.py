"""The one failure type of the boot: a stage and what went wrong in it.

Every boot step runs inside a `timeline.Stage`, which turns any error raised in
it into a `BootFailed` naming that stage; PID 1 reports it in one KINDLING-FATAL
line (initsys/main.py) and powers off.  The network helper reports its own
errors to PID 1 with `describe` (initsys/network.py).  This module imports
nothing at its top, so any module may import it (no cycle).
"""


def describe(exc):
    """One line for a FATAL message: an OSError's or ConfigError's own text, otherwise
    the exception's type and text; for an exception group, that of each member."""
    from initsys.protocol import ConfigError  # only when something failed

    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)

    text = str(exc)
    if isinstance(exc, (OSError, ConfigError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class BootFailed(Exception):
    """Stage `stage` failed; str() is the line for KINDLING-FATAL."""

    def __init__(self, stage, error):
        super().__init__(error if isinstance(error, str) else describe(error))
        self.stage = stage
