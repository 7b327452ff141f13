"""How an engine's memory sits in the CPU's memory system: reused between steps, in huge pages.

Every step allocates the same large activation and gather buffers. By default glibc serves
big allocations with fresh mmap'd pages and unmaps them on free, so each step pays page faults
again (measured here: a 40 MB copy into fresh memory took 4x as long as into reused memory).
`keep_freed_memory` serves them from the heap and never trims it, so the next step reuses the
warm pages.

A decode step streams every weight once (270 MB for SmolLM2-135M in bf16). In 4 KiB pages that
is one TLB miss, and in a VM a two-level page walk, every 4 KiB; `back_with_huge_pages` asks the
kernel for 2 MiB pages (transparent huge pages) under the weights and the KV pool, 512 times fewer
misses. Measured on a 2-core VM: served one stream of SmolLM2-135M bf16, 4 KiB pages took
1.077 [1.009, 1.102] x the time per token of huge pages (docs/benchmarks.md).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_MADV_HUGEPAGE = 14
_MADV_COLLAPSE = 25  # Linux 6.1: move what is already mapped into huge pages now
HUGE_PAGE = 2 << 20
_COLLAPSE_CHUNK = 32 * HUGE_PAGE
MIN_REGION = 8 * HUGE_PAGE  # smaller mappings (thread stacks, library data) are left alone
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
_done = False


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def keep_freed_memory() -> None:
    """Tune glibc malloc for this process (once; a no-op on other C libraries)."""
    global _done
    if _done:
        return
    _done = True
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        logger.debug("mallopt not available; leaving the allocator as it is")
        return
    mallopt(_M_MMAP_MAX, 0)
    mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)


def huge_pages_allowed(setting: str | None) -> bool:
    """Whether the system's THP setting (the text of `THP_SETTING`, None where the file is
    missing) lets a process ask for huge pages: `always` or `madvise` chosen, not `never`."""
    return setting is not None and "[never]" not in setting and "[" in setting


def large_private_regions(maps: str, min_bytes: int = MIN_REGION) -> list[tuple[int, int]]:
    """The 2 MiB-aligned insides of the private anonymous read-write mappings (the heap and
    anonymous mmaps) of at least `min_bytes` in a `/proc/<pid>/maps` text."""
    regions = []
    for line in maps.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[1] != "rw-p":
            continue
        name = fields[5] if len(fields) > 5 else ""
        if name not in ("", "[heap]"):
            continue
        low, high = (int(x, 16) for x in fields[0].split("-"))
        start, end = -(-low // HUGE_PAGE) * HUGE_PAGE, high // HUGE_PAGE * HUGE_PAGE
        if high - low >= min_bytes and end > start:
            regions.append((start, end))
    return regions


def back_with_huge_pages() -> int:
    """Ask for 2 MiB pages under this process's large private memory (the heap, where
    `keep_freed_memory` puts the weights, the KV pool and the step buffers), and move what is
    there now into them. Returns the bytes moved; 0 where THP is off (`never`), the kernel is
    older than 6.1 or this is not Linux. Call it once the weights and the KV pool are allocated."""
    try:
        setting = THP_SETTING.read_text()
    except OSError:
        setting = None
    if not huge_pages_allowed(setting):
        logger.info("huge pages: not used (transparent huge pages are off on this system)")
        return 0
    libc = _libc()
    madvise = getattr(libc, "madvise", None)
    if madvise is None:
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    moved = refused = 0
    for start, end in large_private_regions(Path("/proc/self/maps").read_text()):
        madvise(start, end - start, _MADV_HUGEPAGE)
        for low in range(start, end, _COLLAPSE_CHUNK):  # NOTE: a refused chunk leaves the rest moved
            size = min(_COLLAPSE_CHUNK, end - low)
            if madvise(low, size, _MADV_COLLAPSE) == 0:
                moved += size
            else:  # EINVAL before Linux 6.1 (or a mapping THP cannot take); EAGAIN: none free now
                refused += size
    logger.info("huge pages: %d MiB of weights, KV pool and buffers in 2 MiB pages%s", moved >> 20,
                f" ({refused >> 20} MiB left in 4 KiB pages)" if refused else "")
    return moved
