"""User-facing errors: raise `die(...)` anywhere, caught once in `cli.main`."""

from typing import NoReturn

# Exit status for Kindling's own failures (bad usage of `run`, the VM failing to
# boot, ...).  Like `docker run`, 125 keeps them apart from the program's exit
# codes, which `kindling run` passes through unchanged (126/127 included).
EXIT_KINDLING = 125


class KindlingError(Exception):
    """An error the user can act on: printed as `kindling: error: ...`, no traceback."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = EXIT_KINDLING):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code


def die(message: str, hint: str | None = None, exit_code: int = EXIT_KINDLING) -> NoReturn:
    raise KindlingError(message, hint=hint, exit_code=exit_code)
