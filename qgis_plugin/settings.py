"""The plugin's settings (QgsSettings under ``pointsam/``) and the one engine process it shares."""

from __future__ import annotations

import atexit
from typing import Optional

from qgis.core import QgsSettings

from .engine import EngineProcess, engine_python

KEY_PYTHON = "pointsam/engine_python"
KEY_ARGS = "pointsam/engine_args"

_engine: Optional[EngineProcess] = None


def configured_python() -> str:
    return QgsSettings().value(KEY_PYTHON, "", type=str)


def engine() -> EngineProcess:
    """The engine this QGIS session runs (started on first use, stopped when QGIS exits)."""
    global _engine
    if _engine is None:
        args = QgsSettings().value(KEY_ARGS, "", type=str).split()
        _engine = EngineProcess(engine_python(configured_python()), args)
        atexit.register(stop_engine)
    return _engine


def stop_engine() -> None:
    global _engine
    if _engine is not None:
        _engine.stop()
        _engine = None
