"""Keep freed memory in the process heap (glibc): per-window work allocates the same
large temporaries again and again (STFT frames, CNN activations); served by fresh
``mmap`` pages, every call pays hundreds of page faults (about 1.7 ms per mn04
window was measured). Raising the mmap and trim thresholds makes those buffers
reused, so resident memory stays flat and the per-window time stable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_done = False


def keep_heap(mmap_threshold: int = 64 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Apply once per process; returns whether glibc took the settings."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
              and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
              and libc.mallopt(_M_TOP_PAD, 16 << 20) == 1)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        ok = False
    _done = ok
    return ok
