"""What the plugin knows about the engine's models and adapters between two engine answers.

Processing builds its algorithms on the GUI thread and in ``qgis_process``, where no engine may be called,
so the last ``/v1/models`` answer the plugin saw (a dock Refresh, the end of a download) is kept in the
plugin's settings, and so are the adapters "Fine-tune from points" wrote, wherever the user saved them
(the engine lists only its model folders). :data:`changes` tells the dock and the Processing provider, on
the GUI thread, when either changed, also when the change came from an algorithm's worker thread.
"""

from __future__ import annotations

import json
import os
from typing import List, Optional

from qgis.PyQt.QtCore import QObject, pyqtSignal

from . import settings

KEY_MODELS = "pointsam/last_models"
KEY_ADAPTERS = "pointsam/trained_adapters"


class _Changes(QObject):
    models = pyqtSignal()
    adapter_trained = pyqtSignal(dict, int)  # the adapter's header, the training step its weights are from


changes = _Changes()


def _load(key: str, default):
    try:
        return json.loads(settings.value(key) or "null") or default
    except ValueError:
        return default


def remember_models(answer: dict) -> None:
    """Keep a ``/v1/models`` answer for the next time no engine may be asked (and say when the installed models
    changed)."""
    before = installed_model_names()
    settings.set_value(KEY_MODELS, json.dumps(answer))
    if installed_model_names(answer) != before:
        changes.models.emit()


def last_models() -> Optional[dict]:
    """The last ``/v1/models`` answer the plugin saw, or None."""
    return _load(KEY_MODELS, None)


def installed_model_names(answer: Optional[dict] = None) -> List[str]:
    """Names of the models the engine can load (bundled, found in its folders, downloaded), in its order."""
    answer = answer if answer is not None else last_models() or {}
    names = [m["name"] for m in answer.get("available", [])]
    names += [m["name"] for m in answer.get("catalog", []) if m.get("installed")]
    return list(dict.fromkeys(names))


def remember_adapter(header: dict, kept_step: int) -> None:
    """Keep an adapter the plugin trained (its header: name, path, base) and tell the dock."""
    known = [a for a in _load(KEY_ADAPTERS, []) if a.get("path") != header["path"]]
    settings.set_value(KEY_ADAPTERS, json.dumps([*known, header]))
    changes.adapter_trained.emit(header, kept_step)


def adapters(answer: Optional[dict] = None) -> List[dict]:
    """The engine's adapters (from ``answer``, else the last one seen) and those the plugin trained that still
    exist, each once."""
    answer = answer if answer is not None else last_models() or {}
    found = list(answer.get("adapters", []))
    paths = {os.path.realpath(a["path"]) for a in found}
    for header in _load(KEY_ADAPTERS, []):
        if os.path.isfile(header.get("path", "")) and os.path.realpath(header["path"]) not in paths:
            found.append(header)
            paths.add(os.path.realpath(header["path"]))
    return found


def forget() -> None:
    """Drop what is kept (tests; a profile reset)."""
    settings.set_value(KEY_MODELS, "")
    settings.set_value(KEY_ADAPTERS, "")


def _size_text(size: Optional[int]) -> str:
    if not size:
        return ""
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def model_item_text(name: str, size: Optional[int], installed: bool, sha256_state: str = "") -> str:
    """A model's line in the list: ``vit_b (375 MB, installed, sha256 verified)`` or ``vit_l (1.25 GB): download``."""
    if installed:
        notes = [_size_text(size), "installed"] if size else []
        if sha256_state and sha256_state != "not installed":
            notes.append(sha256_state if sha256_state.startswith("sha256") else f"sha256 {sha256_state}")
        return f"{name} ({', '.join(notes)})" if notes else name
    return f"{name} ({_size_text(size)}): download" if size else f"{name}: download"
