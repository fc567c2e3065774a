"""Keep the process's memory close to what it uses, on glibc (Linux); a no-op elsewhere.

Chips produce many short-lived multi-MB arrays (masks, logits, activations). glibc raises its mmap
threshold after such blocks are freed, then serves them from heap arenas it does not return on its
own, so the resident size grows by hundreds of MB over a run that needs far less. ``malloc_trim``
after each chip hands that memory back. (A fixed mmap threshold would lower the peak further, but it
made every large tensor of the encoder a fresh mapping, which slowed the encoder down.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _libc.malloc_trim  # glibc only (musl has no malloc_trim)
    except (OSError, AttributeError):
        _libc = None


def release_freed_memory() -> None:
    """Return freed heap memory to the operating system."""
    if _libc is not None:
        _libc.malloc_trim(0)
