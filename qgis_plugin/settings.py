"""The plugin's settings (QgsSettings under ``pointsam/``), read here only, and the one engine it talks to.

Which engine, first match wins:

1. ``$POINTSAM_ENGINE_PYTHON`` (headless runs, tests): the plugin runs ``pointsam serve`` with that Python;
2. ``pointsam/engine_url`` (+ ``pointsam/engine_token``): an engine already running there;
3. ``pointsam/engine_connection_file``: an engine already running, found through the file
   ``pointsam serve --connection-file`` writes (read again on each use, so a restarted engine is found);
4. ``pointsam/engine_python`` (+ ``pointsam/engine_args``, ``pointsam/engine_output_root``, the only folder its
   jobs may write under, and ``pointsam/engine_precision``, the encoder's arithmetic): the plugin runs
   ``pointsam serve`` itself.

"Set up engine…" writes ``pointsam/engine_python``; Settings > Options > PointSAM edits every key. The functions
here may be called from QgsTask worker threads (starting the engine never runs on the GUI thread): one lock
guards the engine object, and the engine process has its own lock for starting.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Optional, Tuple, Union

from qgis.core import QgsSettings

from .defaults import CHOICES
from .engine import ENV_PYTHON, EngineProcess, RemoteEngine, engine_python, read_connection_file
from .errors import PluginError

KEY_PYTHON = "pointsam/engine_python"
KEY_ARGS = "pointsam/engine_args"
KEY_URL = "pointsam/engine_url"
KEY_TOKEN = "pointsam/engine_token"
KEY_CONNECTION_FILE = "pointsam/engine_connection_file"
KEY_OUTPUT_ROOT = "pointsam/engine_output_root"  # jobs of the engine the plugin runs write only below it
KEY_PRECISION = "pointsam/engine_precision"  # the image encoder's arithmetic (pointsam serve --precision)

Engine = Union[EngineProcess, RemoteEngine]

_engine: Optional[Engine] = None
_choice: Optional[Tuple[str, ...]] = None
_lock = threading.RLock()


def _value(key: str) -> str:
    return (QgsSettings().value(key, "", type=str) or "").strip()


def value(key: str) -> str:
    """The setting ``key`` (one of the ``KEY_*`` names), stripped; empty when unset."""
    return _value(key)


def set_value(key: str, text: str) -> None:
    """Store ``key``; an empty value removes it, so the next engine choice falls through to the next rule."""
    if text.strip():
        QgsSettings().setValue(key, text.strip())
    else:
        QgsSettings().remove(key)


def configured_python() -> str:
    return _value(KEY_PYTHON)


def engine_args() -> Tuple[str, ...]:
    """``pointsam/engine_args`` split into arguments of ``pointsam serve``, then ``--output-root`` and
    ``--precision`` when set (the engine's default precision adds nothing)."""
    args, root, precision = _value(KEY_ARGS).split(), _value(KEY_OUTPUT_ROOT), _value(KEY_PRECISION)
    if "--precision" in args or precision == CHOICES["precision"][0]:
        precision = ""  # the user's own --precision wins; the engine's default needs no flag
    return (*args, *(("--output-root", os.path.expanduser(root)) if root else ()),
            *(("--precision", precision) if precision else ()))


def engine_choice() -> Tuple[str, ...]:
    """Which engine the settings ask for: ``("process", python, *args)``, ``("url", url, token)`` or ``("file", path)``."""
    url, connection_file = _value(KEY_URL), _value(KEY_CONNECTION_FILE)
    if os.environ.get(ENV_PYTHON) or not (url or connection_file):
        return ("process", engine_python(configured_python()), *engine_args())
    if url:
        return ("url", url, _value(KEY_TOKEN))
    return ("file", connection_file)


def engine() -> Engine:
    """The engine the settings name; a process the plugin started is stopped when the settings change or QGIS exits."""
    global _engine, _choice
    choice = engine_choice()
    with _lock:
        if _engine is None or choice != _choice:
            stop_engine()
            _engine, _choice = _make(choice), choice
        return _engine


def adopt_engine(process: EngineProcess) -> Tuple[bool, Optional[Engine]]:
    """Make ``process`` (started by "Set up engine…") the plugin's engine when the settings now name it, instead of
    starting a second one. Cheap: nothing is stopped here. Returns whether it was adopted and the engine the caller
    must stop (off the GUI thread: stopping waits for the process to exit): the one it replaced, or ``process``
    itself when the settings name another engine."""
    global _engine, _choice
    with _lock:
        choice = ("process", process.python, *process.args)
        try:
            wanted = engine_choice()
        except PluginError:
            wanted = None
        if wanted != choice:
            return False, process
        replaced, (_engine, _choice) = _engine, (process, choice)
        return True, replaced


def _make(choice: Tuple[str, ...]) -> Engine:
    kind, *rest = choice
    if kind == "url":
        url, token = rest
        return RemoteEngine(lambda: (url, token), KEY_URL)
    if kind == "file":
        return RemoteEngine(lambda: read_connection_file(rest[0], KEY_CONNECTION_FILE), KEY_CONNECTION_FILE)
    return EngineProcess(rest[0], rest[1:])


def engine_starts_on_next_call() -> bool:
    """Whether the next engine call must first start ``pointsam serve`` (the dock then says "starting engine…")."""
    try:
        choice = engine_choice()
    except PluginError:
        return False  # the call fails at once with the setup hint
    with _lock:
        if choice[0] != "process":
            return False
        return _engine is None or choice != _choice or getattr(_engine, "_client", None) is None


def stop_engine() -> None:
    global _engine, _choice
    with _lock:
        if _engine is not None:
            _engine.stop()
        _engine, _choice = None, None


atexit.register(stop_engine)
