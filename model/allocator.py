"""glibc's malloc set to keep freed buffers for reuse, which halves the front end's time on CPU.

Inference allocates and frees the same few large buffers on every call (a 10 s spectrogram is
2 MB). glibc hands blocks over 128 kB to the kernel's ``mmap`` unless it has seen a block of that
size freed, and gives the top of its heap back once more than twice that is free; either way the
next call's buffers arrive as fresh pages the kernel zeroes on first touch. Measured on a 2-core
Xeon: the log-mel front end on 10 s of audio took 3.1 ms, 1.3 ms with the settings below; on 60 s,
14.6 ms and 8.5 ms; serving the starter, +42 % throughput. Blocks over 32 MB (the largest
threshold glibc's own rule grows to) still go to ``mmap`` and back, and the heap's top is given
back once 64 MB of it is free. The price is memory kept for the next call: an hour-long upload
raises the server's peak by ~270 MB instead of ~110 MB with a 256 kB threshold (docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import os
import platform

MMAP_THRESHOLD_BYTES = 32 * 2**20
TRIM_THRESHOLD_BYTES = 64 * 2**20
# mallopt's parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Sets the thresholds once per process; True if they are in force.

    Does nothing (False) outside glibc, or where the user set glibc's malloc tunables themselves
    (``MALLOC_*_`` or ``GLIBC_TUNABLES``): their choice wins.
    """
    global _applied
    if _applied is None:
        _applied = _is_glibc() and not _user_tuned_malloc() and _set_thresholds()
    return _applied


def _is_glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _user_tuned_malloc() -> bool:
    return any(name.startswith("MALLOC_") for name in os.environ) or "malloc" in os.environ.get("GLIBC_TUNABLES", "")


def _set_thresholds() -> bool:
    libc = ctypes.CDLL(None)
    # Setting either threshold turns glibc's adaptive rule off, so both are set.
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
