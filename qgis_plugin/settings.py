"""The plugin's settings (QgsSettings under ``pointsam/``), read here only, and the one engine it talks to.

Which engine, first match wins:

1. ``$POINTSAM_ENGINE_PYTHON`` (headless runs, tests): the plugin runs ``pointsam serve`` with that Python;
2. ``pointsam/engine_url`` (+ ``pointsam/engine_token``): an engine already running there;
3. ``pointsam/engine_connection_file``: an engine already running, found through the file
   ``pointsam serve --connection-file`` writes (read again on each use, so a restarted engine is found);
4. ``pointsam/engine_python`` (+ ``pointsam/engine_args``): the plugin runs ``pointsam serve`` itself.
"""

from __future__ import annotations

import atexit
import os
from typing import Optional, Tuple, Union

from qgis.core import QgsSettings

from .engine import ENV_PYTHON, EngineProcess, RemoteEngine, engine_python, read_connection_file

KEY_PYTHON = "pointsam/engine_python"
KEY_ARGS = "pointsam/engine_args"
KEY_URL = "pointsam/engine_url"
KEY_TOKEN = "pointsam/engine_token"
KEY_CONNECTION_FILE = "pointsam/engine_connection_file"

Engine = Union[EngineProcess, RemoteEngine]

_engine: Optional[Engine] = None
_choice: Optional[Tuple[str, ...]] = None


def _value(key: str) -> str:
    return (QgsSettings().value(key, "", type=str) or "").strip()


def configured_python() -> str:
    return _value(KEY_PYTHON)


def engine_choice() -> Tuple[str, ...]:
    """Which engine the settings ask for: ``("process", python, *args)``, ``("url", url, token)`` or ``("file", path)``."""
    url, connection_file = _value(KEY_URL), _value(KEY_CONNECTION_FILE)
    if os.environ.get(ENV_PYTHON) or not (url or connection_file):
        return ("process", engine_python(configured_python()), *_value(KEY_ARGS).split())
    if url:
        return ("url", url, _value(KEY_TOKEN))
    return ("file", connection_file)


def engine() -> Engine:
    """The engine the settings name; a process the plugin started is stopped when the settings change or QGIS exits."""
    global _engine, _choice
    choice = engine_choice()
    if _engine is None or choice != _choice:
        stop_engine()
        _engine, _choice = _make(choice), choice
    return _engine


def _make(choice: Tuple[str, ...]) -> Engine:
    kind, *rest = choice
    if kind == "url":
        url, token = rest
        return RemoteEngine(lambda: (url, token), KEY_URL)
    if kind == "file":
        return RemoteEngine(lambda: read_connection_file(rest[0], KEY_CONNECTION_FILE), KEY_CONNECTION_FILE)
    return EngineProcess(rest[0], rest[1:])


def stop_engine() -> None:
    global _engine, _choice
    if _engine is not None:
        _engine.stop()
    _engine, _choice = None, None


atexit.register(stop_engine)
