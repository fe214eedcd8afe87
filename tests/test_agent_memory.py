"""agent/memory.py: after a copy the agent gives its freed frame buffers back to the kernel.

Reproduces what a copy leaves behind, in a fresh interpreter: glibc's mmap threshold above the
frame size (where its dynamic threshold puts it once a frame has been freed; set here with
mallopt so the test does not hang on glibc's heuristics), then 40 frames from the heap, each
pinned in place by a small object allocated after it, then freed.  Their pages stay in RSS
until release()."""

import subprocess
import sys

from tests.vm import ROOT

SCRIPT = r"""
import ctypes, os
from agent import memory

M_MMAP_THRESHOLD = -3
assert ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1

def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

frames, pins = [], []
for _ in range(40):
    frames.append(os.urandom(256 << 10))
    pins.append(os.urandom(1024))    # above pymalloc's 512 bytes: from malloc too
del frames
held = rss_kib()
released = memory.release()
print(held, rss_kib(), released)
"""


def test_release_returns_freed_frames_to_the_kernel():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    held, after, released = out.split()
    assert released == "True"
    assert int(held) - int(after) >= 8 * 1024, f"RSS {held} kB before the release, {after} kB after"
