"""How the process's C allocator keeps and returns freed memory, on glibc (Linux); a no-op elsewhere.

Chips and clicks produce many short-lived multi-MB arrays (masks, logits, activations, the decoder's
temporaries). Two rules, one per concern:

- :func:`reuse_freed_buffers` (once per process, when a model is loaded on the CPU): glibc serves a block above
  its mmap threshold (128 kB at first, raised only as such blocks are freed) from a fresh ``mmap`` and hands a free
  heap top above its trim limit back to the system, so each decoder pass page-faulted through the temporaries it
  allocates again and again. Both limits are raised so those buffers are reused, the effect PyTorch's CPU
  performance guide gets by preloading jemalloc or tcmalloc. Blocks above :data:`MMAP_BYTES` still come and go
  by mmap, as under glibc's own largest threshold, so the encoder's large tensors are served as before.
- :func:`release_freed_memory` (after each chip): ``malloc_trim`` hands what the chip freed back, so the resident
  size follows one band of chips over a long run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from functools import lru_cache

MMAP_BYTES = 32 * 2**20  # blocks up to this size come from the heap and are reused (glibc's own largest threshold)
TRIM_BYTES = 128 * 2**20  # free memory at the heap's top kept for reuse between trims, at most
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


@lru_cache(maxsize=1)
def glibc():
    """glibc's handle, or None (another C library, another system)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


@lru_cache(maxsize=1)
def reuse_freed_buffers() -> bool:
    """Keep freed decoder-sized buffers in the process for reuse (once per process); True where applied."""
    libc = glibc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES)) \
        and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES))


def release_freed_memory() -> None:
    """Return freed heap memory to the operating system."""
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)
