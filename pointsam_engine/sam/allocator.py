"""How the C allocator treats the few-megabyte buffers SAM's decoder makes on every click (CPU, glibc).

glibc serves a block above its mmap threshold (128 kB at first, raised only as such blocks are freed) from a
fresh ``mmap`` and hands a free heap top above 128 kB back to the system, so a decoder pass on a 1024² chip
page-faults through the ~40 MB of temporaries it allocates again and again: about a third of a click's time on
this project's CPU. :func:`reuse_freed_buffers` raises both limits so those buffers are reused, the effect
PyTorch's CPU performance guide gets by preloading jemalloc or tcmalloc. Memory held back stays bounded by
:data:`TRIM_BYTES`; blocks above :data:`MMAP_BYTES` (a whole chip's batch of logits) still come and go by mmap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from functools import lru_cache

MMAP_BYTES = 32 * 2**20  # blocks up to this size come from the heap and are reused
TRIM_BYTES = 128 * 2**20  # free memory at the heap's top kept for reuse, at most
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


@lru_cache(maxsize=1)
def reuse_freed_buffers() -> bool:
    """Keep freed decoder-sized buffers in the process for reuse (once per process); True where applied
    (Linux with glibc), False elsewhere, where the system allocator is left as it is."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES))
    except (OSError, AttributeError):
        return False
