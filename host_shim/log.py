"""Messages to the user on stderr, all prefixed `kindling: `."""

import sys


def note(message: str) -> None:
    print(f"kindling: {message}", file=sys.stderr, flush=True)
