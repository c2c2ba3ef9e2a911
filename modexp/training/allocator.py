"""CPU training keeps the memory it frees: glibc's malloc tuned so each step's activations
are reused from the heap instead of being mapped, faulted in and unmapped again.

glibc serves an allocation above its mmap threshold (128 KiB at start, raised on the fly up
to 32 MiB) with a fresh mmap and unmaps it on free, and it trims free memory at the top of
the heap back to the OS. A training step allocates and frees the same activation and gradient
buffers every step, so each step page-faults them in afresh. Fixed thresholds (mmap only above
32 MiB, trim only above 1 GiB free) keep them in the heap; results are the same bit for bit
(what it buys: docs/performance.md).
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_ABOVE = 32 << 20  # glibc's own upper bound for the threshold on 64-bit
TRIM_ABOVE = 1 << 30


def tune_cpu_allocator() -> bool:
    """Set glibc's mmap and trim thresholds for this process; False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another C library (musl): leave it as it is
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_ABOVE)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE))
