"""Keep the host memory a program frees for its next step (glibc's allocator).

A jitted step on the CPU backend allocates its temporary buffers afresh every call
(1.6 GB for TogetherNet-s at 320 px, batch 4). glibc serves such blocks from ``mmap``
or from per-thread arenas that it trims, so every step gives the memory back to the
kernel and faults it in again, page by page: about 410,000 minor page faults and 0.6
to 3 s of kernel time per step there, the step taking 1.36 to 3.9 s from call to
call. With no ``mmap`` for large blocks and no trimming, freed memory stays in the
process and is reused: 1.06 to 1.13 s per step (measured on a 2-core VM, with one
arena). The process keeps its peak host memory, which it reached anyway.

The number of arenas (``M_ARENA_MAX``) is :data:`ARENAS`, 4, or
``ADVERSE_VISION_MALLOC_ARENAS``. With one arena every thread allocates from the same
heap and no block is ever faulted in again, but the threads pay for it in user time:
on a 2-core AMD EPYC VM, TogetherNet-s's train step (320 px, batch 4) took 1.18-1.24 s
of user time and 0.69-0.74 s per step with one arena, 0.95-1.10 s and 0.52-0.73 s with
two or four; the dehazer's 640x640 inference 2.59-2.87 s with one, 2.24-2.50 s with four
(README, Benchmark, has the side-by-side runs). Only DN-HL's denoiser train step was
slower with four (about 6 %).

:func:`keep_freed_memory` sets this with ``mallopt`` (Linux, glibc) and is called by
every program (``adverse_vision.cli.run``) before anything starts the backend's
threads. ``ADVERSE_VISION_KEEP_HOST_MEMORY=0`` leaves the allocator as it is.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters of glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

#: glibc arenas (``M_ARENA_MAX``): 4 unless ``ADVERSE_VISION_MALLOC_ARENAS`` says
#: otherwise (see the module docstring).
ARENAS = 4


def arenas() -> int:
    """The number of glibc arenas: ``ADVERSE_VISION_MALLOC_ARENAS``, else
    :data:`ARENAS`."""
    text = os.environ.get("ADVERSE_VISION_MALLOC_ARENAS", "").strip()
    if not text:
        return ARENAS
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"ADVERSE_VISION_MALLOC_ARENAS: expected a whole number of at "
                         f"least 1, got {text!r}")
    return count


def keep_freed_memory() -> bool:
    """Tells glibc to keep freed memory (see the module docstring); returns whether it
    did (False off Linux/glibc, or when ``ADVERSE_VISION_KEEP_HOST_MEMORY=0``)."""
    if os.environ.get("ADVERSE_VISION_KEEP_HOST_MEMORY", "1").lower() in ("0", "false", "no"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    # trim threshold -1: glibc reads it as the largest size, i.e. never trim
    settings = ((_M_ARENA_MAX, arenas()), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    return all(mallopt(param, value) == 1 for param, value in settings)
