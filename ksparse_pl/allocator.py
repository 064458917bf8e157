"""Keeping freed CPU memory in the process: large tensors freed and allocated again every step stop page-faulting.

glibc's ``malloc`` serves blocks above its mmap threshold (at most 32 MiB) with fresh pages from the operating
system and unmaps them on ``free``. A training step frees its gradients and allocates them again, so each step
of a model with large weight matrices pays a page fault per 4 KiB of gradient: here a 48 MiB ``torch.zeros``
took 26 ms instead of 2.7 ms, and the sparse autoencoder step at 16384 latents took 91 ms instead of 61-63 ms
(README, Performance). :func:`keep_freed_memory` raises both thresholds, as ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` would, so freed blocks are reused instead.

It is process-wide and the resident set then stays near its peak, which a training process reaches anyway. The
``ksparse-pl`` command calls it at start (``KSPARSE_PL_KEEP_FREED_MEMORY=0`` turns that off); scripts of your
own can call it once at their start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
_NEVER = 2**31 - 1  # mallopt takes an int


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse instead of returning it to the operating system.

    Returns:
        True if the settings took effect; False where the C library is not glibc (nothing is changed).

    Example:
        >>> from ksparse_pl.allocator import keep_freed_memory
        >>> keep_freed_memory() in (True, False)
        True
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _NEVER)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _NEVER))
