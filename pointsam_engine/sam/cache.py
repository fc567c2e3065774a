"""Image-embedding cache: an LRU in memory bounded in MB, and optionally ``.npy`` files on disk.

Keys name everything an embedding depends on (raster fingerprint, normalisation, chip window,
working scale, model weights), so a second run over the same chips skips the encoder.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np


def embedding_key(**parts) -> str:
    """A stable hex key from JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class EmbeddingCache:
    """``get``/``put`` float32 embeddings by key; memory LRU of ``memory_mb``, disk under ``cache_dir``.

    Safe to share between threads (the HTTP API's jobs and its click predictor use one cache)."""

    def __init__(self, memory_mb: int = 1024, cache_dir: Optional[str] = None):
        self.memory_bytes = int(memory_mb) * 2**20
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._items: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self._used = 0
        self.hits = self.disk_hits = self.misses = 0
        self._lock = threading.RLock()

    def _path(self, key: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / key[:2] / f"{key}.npy"

    def get(self, key: str) -> Optional[np.ndarray]:
        with self._lock:
            return self._get(key)

    def _get(self, key: str) -> Optional[np.ndarray]:
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        if self.cache_dir is not None and self._path(key).exists():
            try:
                array = np.load(self._path(key))
            except (OSError, ValueError):  # a truncated file from elsewhere: recompute
                array = None
            if array is not None:
                self.disk_hits += 1
                self._remember(key, array)
                return array
        self.misses += 1
        return None

    def put(self, key: str, array: np.ndarray) -> None:
        self._remember(key, array)
        if self.cache_dir is not None:
            from ..output import atomic_path

            target = self._path(key)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(target) as tmp, open(tmp, "wb") as fh:
                    np.save(fh, array)
            except OSError:  # a full disk or a read-only cache folder: the run goes on, the embedding stays in memory
                pass

    def _remember(self, key: str, array: np.ndarray) -> None:
        with self._lock:
            self._store(key, array)

    def _store(self, key: str, array: np.ndarray) -> None:
        if array.nbytes > self.memory_bytes or key in self._items:
            return
        self._items[key] = array
        self._used += array.nbytes
        while self._used > self.memory_bytes:
            _, old = self._items.popitem(last=False)
            self._used -= old.nbytes
