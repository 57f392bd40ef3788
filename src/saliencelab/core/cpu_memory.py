"""Keep freed CPU memory in the process, so repeated passes reuse pages instead of faulting.

glibc's malloc (Linux) serves blocks from 128 KiB up with `mmap` (the threshold rises with the
blocks freed, at most to 32 MiB) and returns free memory above 128 KiB at the top of its heap to
the system. Saliency work allocates and frees tensors of many sizes in a loop (model passes,
noisy copies, perturbed rows, maps), so every call maps fresh zero pages and touches them again:
on the shapes CNN a random-logit call of 8 images faulted ~4,000 pages (26 ms against 13 ms
without the faults), one on EfficientNet-Lite0 ~15,000 (169 ms against 117 ms). Raising both
thresholds lets freed blocks be reused: the process's peak memory stays what it was, but the
memory it reached is kept until the process ends rather than given back after each call.

This changes a process-wide setting, so the library never does it by itself: the CLI (and the
benchmarks) call `reuse_freed_memory()` at start; a script or notebook opts in with
`sl.reuse_freed_memory()`. Setting the environment variables `MALLOC_MMAP_THRESHOLD_=33554432
MALLOC_TRIM_THRESHOLD_=1073741824` before Python starts does the same.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters (glibc <malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 2**30

_applied: tuple[int, int] | None = None


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def reuse_freed_memory(
    mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD
) -> bool:
    """Make glibc's malloc keep freed memory for reuse; True where applied (Linux with glibc),
    False elsewhere (other C libraries manage memory their own way; nothing is changed).

    Blocks below `mmap_threshold` bytes come from the heap rather than fresh `mmap` pages, and
    up to `trim_threshold` free bytes at the heap's top stay in the process. Process-wide and
    not undone (the previous values cannot be read back); calling it again is free.
    """
    global _applied
    wanted = (int(mmap_threshold), int(trim_threshold))
    if _applied == wanted:
        return True
    if min(wanted) < 0 or wanted[0] > MMAP_THRESHOLD:
        raise ValueError(
            f"mmap_threshold must be in [0, {MMAP_THRESHOLD}] and trim_threshold ≥ 0 bytes, got "
            f"{wanted[0]} and {wanted[1]}."
        )
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = libc.mallopt(_M_MMAP_THRESHOLD, wanted[0]) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, min(wanted[1], 2**31 - 1)) == 1 and ok
    if ok:
        _applied = wanted
    return ok
