"""Image-embedding cache: an LRU in memory bounded in MB, and optionally ``.npy`` files on disk.

Keys name everything an embedding depends on (raster fingerprint, normalisation, chip window,
working scale, model weights), so a second run over the same chips skips the encoder. An embedding is one
array (SAM; ``KEY.npy`` on disk) or a tuple of arrays (SAM 2.1's image embedding and high-resolution maps;
``KEY.npz``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

Embedding = Union[np.ndarray, Tuple[np.ndarray, ...]]


def embedding_key(**parts) -> str:
    """A stable hex key from JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class EmbeddingCache:
    """``get``/``put`` float32 embeddings (an array or a tuple of arrays) by key; memory LRU of ``memory_mb``,
    disk under ``cache_dir``.

    Safe to share between threads (the HTTP API's jobs and its click predictor use one cache)."""

    def __init__(self, memory_mb: int = 1024, cache_dir: Optional[str] = None):
        self.memory_bytes = int(memory_mb) * 2**20
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._items: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self._used = 0
        self.hits = self.disk_hits = self.misses = 0
        self._lock = threading.RLock()

    def _path(self, key: str, suffix: str = ".npy") -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / key[:2] / f"{key}{suffix}"

    def get(self, key: str) -> Optional[Embedding]:
        with self._lock:
            return self._get(key)

    def _get(self, key: str) -> Optional[Embedding]:
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        array = self._read(key) if self.cache_dir is not None else None
        if array is not None:
            self.disk_hits += 1
            self._remember(key, array)
            return array
        self.misses += 1
        return None

    def _read(self, key: str) -> Optional[Embedding]:
        try:
            if self._path(key).exists():
                return np.load(self._path(key))
            if self._path(key, ".npz").exists():
                with np.load(self._path(key, ".npz")) as arrays:
                    return tuple(arrays[f"arr_{i}"] for i in range(len(arrays.files)))
        except (OSError, ValueError, KeyError):  # a truncated file from elsewhere: recompute
            pass
        return None

    def put(self, key: str, array: Embedding) -> None:
        self._remember(key, array)
        if self.cache_dir is not None:
            from ..output import atomic_path

            target = self._path(key, ".npz" if isinstance(array, tuple) else ".npy")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(target) as tmp, open(tmp, "wb") as fh:
                    if isinstance(array, tuple):
                        np.savez(fh, *array)
                    else:
                        np.save(fh, array)
            except OSError:  # a full disk or a read-only cache folder: the run goes on, the embedding stays in memory
                pass

    def _remember(self, key: str, array: Embedding) -> None:
        with self._lock:
            self._store(key, array)

    def _store(self, key: str, array: Embedding) -> None:
        size = _nbytes(array)
        if size > self.memory_bytes or key in self._items:
            return
        self._items[key] = array
        self._used += size
        while self._used > self.memory_bytes:
            _, old = self._items.popitem(last=False)
            self._used -= _nbytes(old)


def _nbytes(array: Embedding) -> int:
    return sum(a.nbytes for a in array) if isinstance(array, tuple) else array.nbytes
