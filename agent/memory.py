"""Give a copy's peak memory back to the kernel when the copy ends.

A copy moves 256 KiB frames through a window of up to 2 MiB per channel.  glibc serves
the first such buffer with mmap, and after it is freed raises its mmap threshold to that
size (the dynamic threshold), so the later ones come from the heap -- where, once freed,
they stay: the agent's RSS grew by 5 MiB after a 64 MiB copy, all of it private, and the
pages it shares with PID 1 fell below half of its RSS.  `malloc_trim(0)` returns the
free pages of every arena (madvise), which is what glibc offers for this; there is no
Python API for it, hence ctypes (PID 1 has imported it already, so the forked agent
pays nothing to use it).  Called after a session that copied, not per frame: a trim
walks the arenas, a few hundred microseconds.
"""

import ctypes

_libc = None


def release():
    """malloc_trim(0): free heap pages back to the kernel.  True if any were released."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None)   # the interpreter links libc; no ldconfig needed
    return bool(_libc.malloc_trim(0))
