"""Progress messages on stderr: `with step("Building initrd"): ...`."""

from __future__ import annotations

import contextlib
import sys
import time

_depth = 0


def _emit(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def info(text: str) -> None:
    _emit("  " * _depth + text)


def warn(text: str) -> None:
    _emit("  " * _depth + "warning: " + text)


@contextlib.contextmanager
def step(title: str):
    """Print `title...` now and `title: done in N.NNs` (or failed) at the end."""
    global _depth
    indent = "  " * _depth
    _emit(f"{indent}==> {title}...")
    start = time.monotonic()
    _depth += 1
    ok = False
    try:
        yield
        ok = True
    finally:
        _depth -= 1
        elapsed = time.monotonic() - start
        _emit(f"{indent}<== {title}: {'done' if ok else 'FAILED'} in {elapsed:.2f}s")


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"
