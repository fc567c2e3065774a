"""Job preparation: check a job request now (bad input answers 4xx at once), then hand back the job's work.

The work is ``work(progress, cancel) -> result`` for :class:`~pointsam_engine.jobs.JobRunner`; it runs later,
off the request thread.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional

from ..errors import OptionError, PointsError
from ..jobs import Work
from . import schemas
from .engine import Engine


def segment_work(engine: Engine, body: schemas.SegmentJobRequest) -> Work:
    """A segment job: inputs, output and model checked before it is queued."""
    from ..pipeline import check_segment_inputs

    cfg = body.config(engine.config)
    engine.check_output(body.output)
    if (body.points is None) == (body.points_geojson is None):
        raise PointsError("give the points either as 'points' (a file path) or as 'points_geojson', not both or neither")
    check_segment_inputs(body.raster, body.points, body.output, cfg)
    # loads a new model: after the cheap checks
    predictor = engine.predictor(engine.models.get(body.model, body.adapter, cfg.stretch, cfg.sar_db))
    inline = _inline_points(body.points_geojson, body.points_crs) if body.points_geojson is not None else None

    def work(progress, cancel):
        from ..pipeline import segment

        try:
            result = segment(body.raster, inline.name if inline else body.points, body.output, cfg,
                             progress=progress, cancel=cancel, predictor=predictor)
        finally:
            if inline:
                inline.cleanup()
        return {"output": str(result.output), "report": json.loads(json.dumps(result.report, default=str))}

    return work


def batch_work(engine: Engine, body: schemas.BatchJobRequest) -> Work:
    """A batch job: inputs and output checked before it is queued; the tasks run on Dask, not on the server's model."""
    from ..batch import batch_segment, check_batch_inputs

    cfg = body.config(engine.config)
    engine.check_output(body.output)
    if body.points_geojson is not None:
        raise PointsError("a batch takes its points as 'points' (a file path), not 'points_geojson'")
    check_batch_inputs(body.points, body.output, body.rasters, cfg, resume=body.resume, workers=body.workers,
                       scheduler=body.scheduler)

    def work(progress, cancel):
        result = batch_segment(body.points, body.output, body.rasters, cfg, workers=body.workers,
                               scheduler=body.scheduler, resume=body.resume, progress=progress, cancel=cancel)
        return {"output": str(result.output), "report": json.loads(json.dumps(result.report, default=str))}

    return work


def train_work(engine: Engine, body: schemas.TrainJobRequest) -> Work:
    """The train job from the ``pointsam.jobs`` entry point (``training``), on ``body.model`` or the server's base."""
    from importlib.metadata import entry_points

    from ..sam.model import resolve_model_path
    from .models import check_path

    found = [e for e in entry_points(group="pointsam.jobs") if e.name == "train"]
    try:
        make_work = found[0].load() if found else None
    except ImportError as exc:
        raise OptionError(f"training is not installed here ({exc.name} missing); install pointsam[train]") from None
    if make_work is None:
        raise OptionError("training is not installed here; install pointsam[train] in the engine's environment")
    engine.check_output(body.output)
    options = body.model_dump()
    options["model"] = body.model if body.model is not None else engine.config.model
    if options["model"] is not None:
        check_path("model", options["model"])
    resolve_model_path(options["model"])  # a wrong name answers 422 now, not as a failed job
    return make_work(options)


def pull_work(name: str) -> Work:
    """Download the official checkpoint ``name``; a wrong name answers 422 now, not as a failed job."""
    from ..catalog import checkpoint
    from ..download import pull

    name = checkpoint(name).name
    return lambda progress, cancel: pull(name, progress, cancel)


class _InlinePoints:
    def __init__(self, folder: tempfile.TemporaryDirectory, name: str):
        self._folder, self.name = folder, name

    def cleanup(self) -> None:
        self._folder.cleanup()


def _inline_points(collection: dict, crs: Optional[str]) -> _InlinePoints:
    """Write inline GeoJSON points to a temporary GeoPackage the pipeline reads like any point layer."""
    import geopandas as gpd

    try:
        features = collection["features"]
        frame = gpd.GeoDataFrame.from_features(features, crs=crs or "EPSG:4326")
    except Exception as exc:
        raise PointsError(f"points_geojson is not a GeoJSON FeatureCollection of points ({type(exc).__name__}); "
                          "give {'type': 'FeatureCollection', 'features': [...]}") from None
    if frame.empty or not (frame.geom_type == "Point").all():
        raise PointsError("points_geojson must hold at least one feature, all of them Points")
    folder = tempfile.TemporaryDirectory(prefix="pointsam-points-")
    path = Path(folder.name) / "points.gpkg"
    frame.to_file(path, layer="points")
    return _InlinePoints(folder, str(path))
