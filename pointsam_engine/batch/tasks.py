"""One task on a Dask worker: ``pointsam segment`` of one raster (or band) with the task's clicks, written
atomically into the work folder; and the model each worker process loads once and shares between its tasks.

A task's files in the work folder: ``<id>.gpkg`` (the per-raster layers, as ``pointsam segment`` writes them)
and then ``<id>.json`` (its report and key). The JSON is written last, so a task is finished exactly when its
JSON names the task's current key: ``--resume`` skips those, and redoes one whose raster, clicks or options
changed. A task that fails returns its one-line reason instead of raising, so the others go on.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Dict, Optional

import geopandas as gpd

from ..config import SegmentConfig
from ..errors import PointSamError
from ..output import write_json
from .assign import TaskSpec

_MODELS: Dict[tuple, object] = {}
_LOCK = threading.Lock()
LOADS = {"count": 0}  # models this process has loaded (the report shows one per worker, not one per task)


WORKER_LOG_ENV = "POINTSAM_WORKER_LOG"  # set by the batch for the worker processes it spawns, never by a user


def dask_setup(worker) -> None:
    """Run by every LocalCluster worker process as it starts (a Dask preload of this module): Ctrl-C in a
    terminal reaches the whole process group, and the batch's client shuts the workers down itself, so a worker
    ignores SIGINT rather than die printing a traceback. Its log goes to the file the batch names, not to the
    terminal: a worker held up while the batch shuts down logs a lost heartbeat, which is not the user's error."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the process's main thread: the worker was not started by a nanny
        pass
    if os.environ.get(WORKER_LOG_ENV):
        _log_to_file(logging.getLogger("distributed"), Path(os.environ[WORKER_LOG_ENV]))


def _log_to_file(log: logging.Logger, path: Path) -> None:
    """``log``'s terminal handlers replaced by one appending to ``path``, at the level they had."""
    terminal = [h for h in log.handlers if type(h) is logging.StreamHandler]
    handler = logging.FileHandler(path, delay=True)
    handler.setFormatter(logging.Formatter(f"%(asctime)s pid {os.getpid()} %(name)s %(levelname)s: %(message)s"))
    handler.setLevel(min((h.level for h in terminal), default=logging.NOTSET))
    for h in terminal:
        log.removeHandler(h)
    log.addHandler(handler)


def task_files(work: Path, task: TaskSpec):
    """``(layers GeoPackage, report JSON)`` of ``task`` in the work folder."""
    return Path(work) / f"{task.id}.gpkg", Path(work) / f"{task.id}.json"


def finished(work: Path, task: TaskSpec) -> Optional[dict]:
    """The stored outcome of ``task`` when it finished with the task's current key, else None."""
    gpkg, report = task_files(work, task)
    if not (gpkg.is_file() and report.is_file()):
        return None
    try:
        stored = json.loads(report.read_text())
    except (OSError, ValueError):
        return None
    return stored if stored.get("key") == task.key else None


def worker_model(cfg: SegmentConfig):
    """The model ``cfg`` asks for, loaded once per worker process and shared by its tasks (threads)."""
    from ..pipeline import load_configured_model

    key = (cfg.model, cfg.adapter, cfg.model_type, cfg.device, cfg.precision, str(cfg.stretch), cfg.sar_db)
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = load_configured_model(cfg)
            LOADS["count"] += 1
        return _MODELS[key]


def _predictor(cfg: SegmentConfig):
    """A predictor of the task's own (one chip at a time) on the worker's shared model."""
    from ..sam.cache import EmbeddingCache
    from ..sam.predict import ChipPredictor

    return ChipPredictor(worker_model(cfg), EmbeddingCache(cfg.cache_mb, cfg.cache_dir), cfg.decoder_batch)


def run_task(task: TaskSpec, clicks: gpd.GeoDataFrame, cfg: SegmentConfig, work: str) -> dict:
    """Segment ``task``'s raster with its ``clicks`` (indexed by fid) into the work folder.

    Returns ``{"id", "key", "report", "worker", "loads"}``, or ``{"id", "failed": reason}`` when the raster or a
    write fails (one line, the engine's words).
    """
    from ..pipeline import segment

    gpkg, report_path = task_files(Path(work), task)
    try:
        with tempfile.TemporaryDirectory(prefix="pointsam-task-") as tmp:
            points = os.path.join(tmp, "points.gpkg")
            clicks.reset_index(names="fid").to_file(points, layer="points", driver="GPKG")
            result = segment(task.raster, points, gpkg, cfg.replace(overwrite=True, out_crs=None, layer=None),
                             predictor=_predictor(cfg))
    except PointSamError as exc:
        return {"id": task.id, "failed": str(exc)}
    except (OSError, RuntimeError, ValueError) as exc:  # GDAL on a damaged file, mid-read
        return {"id": task.id, "failed": f"{task.raster}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    outcome = {"id": task.id, "key": task.key, "raster": task.raster, "band": task.band,
               "report": json.loads(json.dumps(result.report, default=str)),
               "worker": f"{os.uname().nodename}:{os.getpid()}", "loads": LOADS["count"]}
    write_json(report_path, outcome)
    return outcome
