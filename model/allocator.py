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

glibc also gives each thread that allocates its own arena (up to 8 per core), and each arena keeps
its own freed buffers: a server's reader, decoder and inference threads each held the high-water
mark of what they had touched. ``share_arenas`` (the server calls it) keeps that to two arenas in
all (``ARENA_MAX``). Measured with
the default model on a 2-core Xeon: an hour of 48 kHz stereo raised the peak by 282 MB with the
default arena count and by 190 MB with two, and 60 s after four such uploads the server was 80 MB
and 7 MB above where it started; serving 32 clients of 5 s clips went 223/233 -> 230/239
audio-s/s (two alternated rounds), so the shared arenas cost no throughput.
"""

from __future__ import annotations

import ctypes
import os
import platform

MMAP_THRESHOLD_BYTES = 32 * 2**20
TRIM_THRESHOLD_BYTES = 64 * 2**20
ARENA_MAX = 2
# mallopt's parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
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


def share_arenas() -> bool:
    """Caps glibc's malloc arenas at ``ARENA_MAX`` for the threads created from now on (see above); True if set.

    Like the thresholds, left alone outside glibc or where the user tuned malloc themselves.
    """
    if not _is_glibc() or _user_tuned_malloc():
        return False
    return bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, ARENA_MAX))


def release_free_memory() -> bool:
    """Gives the C heap's free pages back to the kernel (glibc's ``malloc_trim``); False outside glibc.

    The thresholds above keep freed buffers for the next call, which is right while requests keep
    coming; after a burst of long requests the server calls this once it is idle, so its resident
    set returns near where it was. It walks every arena, a few ms; call it off the event loop.
    """
    if not _is_glibc():
        return False
    return bool(ctypes.CDLL(None).malloc_trim(0))
