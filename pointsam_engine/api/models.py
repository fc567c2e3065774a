"""The models a server runs: the one it started with, a few more loaded on request, and what it can offer.

A request may name a ``model`` (registered name or path) and an ``adapter`` (``*.adapter.pt``);
:class:`ModelPool` loads each (model, adapter) pair once and keeps the server's own model plus the most
recently used others, so the click path and the jobs share them. :func:`catalogue` lists the models and
adapters found on disk for ``GET /v1/models``, reading only each adapter's header.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..config import SegmentConfig
from ..errors import ModelError

KEPT_MODELS = 2  # the server's own model and one other: each can weigh GBs (vit_h)

FileKey = Tuple[str, ...]


def check_path(what: str, value: str) -> None:
    """Refuse in one line a model or adapter name the file system cannot even look up (too long, ...)."""
    try:
        os.stat(value)
    except (FileNotFoundError, NotADirectoryError):
        pass  # a registered name, or a missing file: the loader says which
    except OSError as exc:
        raise ModelError(f"{what} {value[:60]}... cannot be looked up ({exc.strerror}); give a registered model "
                         "name or the path of a file") from None


def _file_key(path) -> FileKey:
    """A file by resolved path, mtime and size, so a rewritten adapter is loaded again."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return (str(path),)  # missing: loading it gives the engine's one-line error
    return (str(path.resolve()), str(stat.st_mtime_ns), str(stat.st_size))


class ModelPool:
    """Loaded models by (checkpoint, adapter); the server's own is always kept, the rest are an LRU.

    Thread-safe. A model evicted while a job still runs on it stays alive until that job ends.
    """

    def __init__(self, config: SegmentConfig, model=None, size: int = KEPT_MODELS):
        self.config, self.size = config, max(size, 1)
        self.default = model if model is not None else self._load(config.model, config.adapter, config.model_type)
        self._default_key = self._key(config.model, config.adapter)
        self._others: "OrderedDict[tuple, object]" = OrderedDict()
        self._lock = threading.Lock()
        self._checked: set = set()  # (adapter file version, stretch, sar_db) found to match

    def get(self, model: Optional[str] = None, adapter: Optional[str] = None, stretch=None, sar_db: bool = False):
        """The :class:`~pointsam_engine.sam.model.LoadedModel` for ``model`` (default: the server's base) and
        ``adapter``; neither given: the server's own model (with its adapter, if it was started with one).
        With the request's ``stretch`` (and ``sar_db``), an adapter trained under another one is refused."""
        key = self._key(model if model is not None else self.config.model, adapter)
        in_effect = adapter if adapter is not None else (self.config.adapter if model is None else None)
        if in_effect is not None and stretch is not None:
            self._check_normalization(in_effect, stretch, sar_db)
        if model is None and adapter is None:
            return self.default
        if key == self._default_key:
            return self.default
        with self._lock:  # one load at a time: two requests for a new model load it once
            if key not in self._others:
                self._others[key] = self._load(model if model is not None else self.config.model, adapter)
                while len(self._others) > self.size - 1:
                    self._others.popitem(last=False)
            self._others.move_to_end(key)
            return self._others[key]

    def loaded(self) -> List[Tuple[str, object]]:
        """``(checkpoint path, model)`` of every model in memory, the server's own first."""
        with self._lock:
            return [(self._default_key[0][0], self.default), *((key[0][0], m) for key, m in self._others.items())]

    def _key(self, model: Optional[str], adapter: Optional[str]) -> tuple:
        from ..sam.model import resolve_model_path

        for what, value in (("model", model), ("adapter", adapter)):
            if value is not None:
                check_path(what, value)
        return _file_key(resolve_model_path(model)), _file_key(adapter) if adapter else None

    def _check_normalization(self, adapter: str, stretch, sar_db: bool) -> None:
        """Refuse an adapter trained under another stretch than the request's; each file version and stretch
        is checked once (the header is read from disk only then)."""
        from ..config import stretch_text
        from ..sam.adapter import check_normalization, read_adapter

        key = (_file_key(adapter), stretch_text(stretch), bool(sar_db))
        if key not in self._checked:
            check_normalization(read_adapter(adapter, mmap=True), adapter, stretch, sar_db)
            self._checked.add(key)

    def _load(self, model: Optional[str], adapter: Optional[str], model_type: Optional[str] = None):
        """Load without checking the adapter's normalization: each request brings its own stretch."""
        from ..sam.adapter import load_adapted_model

        return load_adapted_model(model, adapter, model_type=model_type, device=self.config.device,
                                  precision=self.config.precision)


_SHA256: Dict[FileKey, str] = {}


def model_sha256(path) -> str:
    """A checkpoint's sha256, computed once per file version (official checkpoints are GBs), or as
    ``pointsam models pull`` / ``verify`` recorded it for this version."""
    from ..download import recorded_sha256
    from ..sam.model import file_sha256

    key = _file_key(path)
    if key not in _SHA256:
        _SHA256[key] = recorded_sha256(path) or file_sha256(path)
    return _SHA256[key]


def available_models(pool: ModelPool) -> List[dict]:
    """Bundled models, registered ones found in the model folders, and any loaded model given by path."""
    from ..catalog import installed_path
    from ..sam.model import BUNDLED, BUNDLED_DIR, REGISTERED

    found = [(name, BUNDLED_DIR / file) for name, file in BUNDLED.items()]
    for name in REGISTERED:
        path = installed_path(name)
        if path is not None:
            found.append((name, path))
    loaded = {m.sha256: m for _, m in pool.loaded()}
    models = [{"name": name, "path": str(path), "sha256": model_sha256(path)} for name, path in found]
    known = {m["sha256"] for m in models}
    for path, m in pool.loaded():
        if m.sha256 not in known:  # started with --model PATH, or loaded by a request naming a path
            models.append({"name": m.name, "path": path, "sha256": m.sha256})
            known.add(m.sha256)
    for m in models:
        m["loaded"] = m["sha256"] in loaded
        if m["loaded"]:
            m.update(model_type=loaded[m["sha256"]].model_type, image_size=loaded[m["sha256"]].image_size)
    return models


def adapter_header(path) -> Optional[dict]:
    """``{"name", "path", "base": {"name", "sha256", "model_type"}}`` of an adapter file; None when it is not one
    (:func:`pointsam_engine.sam.adapter.adapter_header`)."""
    from ..sam.adapter import adapter_header as read_header

    return read_header(path)


def available_adapters(folders: Iterable[Path]) -> List[dict]:
    """The ``*.adapter.pt`` files directly in ``folders`` (each file once), with their base model."""
    from ..sam.adapter import is_adapter_name

    seen, adapters = set(), []
    for folder in folders:
        for path in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else ():
            if not is_adapter_name(path) or not path.is_file():
                continue
            header = None if path.resolve() in seen else adapter_header(path)
            seen.add(path.resolve())
            if header is not None:
                adapters.append(header)
    return adapters


def adapter_folders(extra: Sequence[str]) -> List[Path]:
    """The model folders (:func:`~pointsam_engine.sam.model.model_dirs`) and the server's ``--adapters-dir``."""
    from ..sam.model import model_dirs

    return [*model_dirs(), *(Path(folder) for folder in extra)]
