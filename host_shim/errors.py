"""User-facing errors: raise `die(...)` anywhere, caught once in `cli.main`.

KindlingError is the one error type at the boundary: the image builder's BuildError
is turned into one by `build_errors` (every call into image_build goes through it, and
cli.main converts any that escaped the same way).
"""

import errno
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

# Exit status for every failure of Kindling itself, usage errors included.  Like
# `docker run`, 125 keeps them apart from a program's exit codes, which `kindling run`
# and `kindling exec` pass through unchanged (126/127 included).
EXIT_KINDLING = 125


class KindlingError(Exception):
    """An error the user can act on: printed as `kindling: error: ...`, no traceback.

    `exit_code` None means EXIT_KINDLING; `kindling run` sets 128+N when signal N stopped it.
    """

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code


class NotFound(KindlingError):
    """The thing named (an instance, a volume) does not exist (`kindling serve`: 404)."""


class NoSuchInstance(NotFound):
    pass


class Conflict(KindlingError):
    """Refused because of the current state of what it acts on: a transition the state
    table does not allow from the instance's state, a name or a volume in use
    (`kindling serve`: 409)."""


class TimedOut(KindlingError):
    """An operation that did not finish within the time its caller gave it
    (`kindling serve`: 504)."""


def die(message: str, hint: str | None = None, exit_code: int | None = None) -> NoReturn:
    raise KindlingError(message, hint=hint, exit_code=exit_code)


def from_build_error(error: Exception, what: str | None = None) -> KindlingError:
    """A BuildError (image_build's one error type) as a KindlingError."""
    return KindlingError(f"{what}: {error}" if what else str(error))


@contextmanager
def build_errors(what: str | None = None):
    """`with build_errors("building the VM image failed"):` around calls into image_build."""
    from image_build.errors import BuildError
    try:
        yield
    except BuildError as e:
        raise from_build_error(e, what) from e


@contextmanager
def disk_full_errors(where: Path):
    """A full disk (ENOSPC, EDQUOT) while writing under `where` as a KindlingError
    naming the file and the directory whose disk is full."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        path = e.filename2 or e.filename      # a copy's destination is filename2
        writing = f" (writing {path})" if path else ""
        raise KindlingError(f"no space left on the disk of {where}{writing}",
                            hint=f"free some space there, or set $KINDLING_HOME to a "
                                 f"directory on a disk with more room") from e


def kindling_error_in(group: BaseExceptionGroup) -> KindlingError | None:
    """The KindlingError a nursery wrapped, when that is all the group holds."""
    matched, rest = group.split(KindlingError)
    if matched is None or rest is not None:
        return None
    while isinstance(matched, BaseExceptionGroup):
        matched = matched.exceptions[0]
    return matched
