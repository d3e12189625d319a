"""Give freed heap memory back to the operating system between batches (glibc ``malloc_trim``).

glibc raises its mmap threshold after the first large block is freed, so later batch-sized tensors
come from the heap, and the pages they free stay resident: a long cell's RSS then grows with the
number of batches although nothing is kept. ``malloc_trim(0)`` returns those free pages. Elsewhere
(macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim") if name else None
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Return the C heap's free pages to the OS; True if that was done (glibc), False where unsupported."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
