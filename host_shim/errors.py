"""User-facing errors: raise `die(...)` anywhere, caught once in `cli.main`."""

from typing import NoReturn

# Exit status for Kindling's own failures in `kindling run` (bad usage, the VM failing to
# boot, ...).  Like `docker run`, 125 keeps them apart from the program's exit codes,
# which `kindling run` passes through unchanged (126/127 included).  The other
# commands exit 1 on an error, as docker's do.
EXIT_KINDLING = 125
EXIT_ERROR = 1


class KindlingError(Exception):
    """An error the user can act on: printed as `kindling: error: ...`, no traceback.

    `exit_code` None means the command's usual error status (125 for run, 1 otherwise).
    """

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code


class NoSuchInstance(KindlingError):
    pass


def die(message: str, hint: str | None = None, exit_code: int | None = None) -> NoReturn:
    raise KindlingError(message, hint=hint, exit_code=exit_code)


def kindling_error_in(group: BaseExceptionGroup) -> KindlingError | None:
    """The KindlingError a nursery wrapped, when that is all the group holds."""
    matched, rest = group.split(KindlingError)
    if matched is None or rest is not None:
        return None
    while isinstance(matched, BaseExceptionGroup):
        matched = matched.exceptions[0]
    return matched
