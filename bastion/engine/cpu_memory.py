"""Stops glibc from returning freed memory to the OS between engine steps.

Every step allocates the same large activation and gather buffers. By default glibc serves
big allocations with fresh mmap'd pages and unmaps them on free, so each step pays page faults
again (measured here: a 40 MB copy into fresh memory took 4x as long as into reused memory).
Serving them from the heap and never trimming it lets the next step reuse the warm pages.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_done = False


def keep_freed_memory() -> None:
    """Tune glibc malloc for this process (once; a no-op on other C libraries)."""
    global _done
    if _done:
        return
    _done = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        logger.debug("mallopt not available; leaving the allocator as it is")
        return
    mallopt(_M_MMAP_MAX, 0)
    mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
