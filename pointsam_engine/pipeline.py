"""``segment()``: a raster and a point layer become instance polygons, boxes and a run report.

Data path: raster (stretch once) -> points (reproject, locate, group) -> chips (greedy cover) ->
per chip: encode once, decode every object, calibrate, settle pixels shared inside the chip ->
as soon as no later chip can meet a chip: settle pixels shared with its neighbours and trace its
objects -> simplify as one coverage -> measure -> GeoPackage (atomic; an existing one keeps its other layers).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import geopandas as gpd
import numpy as np
import rasterio

from . import __version__
from .chip_loop import check_cancel, segment_chips
from .chips import plan_chips
from .coarse import retry_coarser
from .config import SegmentConfig
from .errors import PointsError
from .layers import build_layers
from .measure import grid_tolerances
from .output import check_distinct, check_file_target, check_folder, check_target, write_geopackage
from .points import group_instances, locate_on_raster, read_points
from .raster import Raster, compute_normalization, to_working_each
from .sam.cache import EmbeddingCache

ProgressCallback = Callable[[float, str], None]


@dataclass
class SegmentResult:
    """What :func:`segment` returns: the layers (GeoDataFrames), the run report, and the file written."""

    layers: Dict[str, gpd.GeoDataFrame]
    report: dict
    output: Optional[Path] = None


class _Stages:
    def __init__(self):
        self.seconds: Dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def check_segment_inputs(raster, points, output, cfg: SegmentConfig, reports: Optional[Dict[str, object]] = None) -> None:
    """Refuse, before any work, what would fail later or lose a file: every output (``output`` and the JSON
    ``reports``, by option) writable, none a folder or the same path as another output or an input, an
    existing one refused without ``overwrite``; ``cache_dir`` a writable folder; the raster readable; the
    point layer present. The CLI, the API's jobs and :func:`segment` itself call it."""
    reports = {option: path for option, path in (reports or {}).items() if path}
    inputs = {"RASTER": raster, "POINTS": points, "--adapter": cfg.adapter, "--model": cfg.model}
    check_distinct({"-o": output, **reports}, {k: v for k, v in inputs.items() if v and Path(str(v)).exists()})
    if output is not None:
        check_target(output, cfg.overwrite)
    for option, path in reports.items():
        check_file_target(path, cfg.overwrite, option)
    if cfg.cache_dir:
        check_folder(cfg.cache_dir, "--cache-dir", create=True)
    Raster(raster, bands=cfg.bands, nodata=cfg.nodata, assume_crs=cfg.assume_crs, chip_scale=cfg.chip_scale).close()
    if points is not None and not Path(str(points)).is_file():
        what = "is a folder" if Path(str(points)).is_dir() else "does not exist"
        raise PointsError(f"point layer {points} {what}; give the path of a point file (GeoPackage, Shapefile, GeoJSON)")


def _commit(cancel) -> None:
    """Called just before the output changes: a cancel honoured until then (see jobs.CancelToken)."""
    commit = getattr(cancel, "commit", None)
    if commit is not None:
        commit()
    else:
        check_cancel(cancel)


def load_configured_model(cfg: SegmentConfig):
    """The model a config asks for (``model``, ``model_type``, ``device``, ``precision``), with its ``adapter``
    applied; an adapter trained under another ``stretch`` / ``sar_db`` than the config's is refused."""
    from .sam.adapter import load_adapted_model

    return load_adapted_model(cfg.model, cfg.adapter, model_type=cfg.model_type, device=cfg.device,
                              precision=cfg.precision, stretch=cfg.stretch, sar_db=cfg.sar_db)


def make_predictor(cfg: SegmentConfig):
    """The SAM predictor a config asks for (model, device, embedding cache)."""
    from .sam.predict import ChipPredictor

    return ChipPredictor(load_configured_model(cfg), EmbeddingCache(cfg.cache_mb, cfg.cache_dir), cfg.decoder_batch)


def segment(raster, points, output=None, config: Optional[SegmentConfig] = None, *,
            progress: Optional[ProgressCallback] = None, cancel=None, predictor=None, **options) -> SegmentResult:
    """Segment one object per point (or per ``instance_field`` group) of ``points`` over ``raster``.

    Args:
        raster: path of a GDAL raster (GeoTIFF, VRT, ...).
        points: path of an OGR point layer (GeoPackage, Shapefile, GeoJSON, ...).
        output: GeoPackage to write (atomically); an existing one is written into, keeping its other layers,
            and refused when it has the run's layers unless ``overwrite=True``. None returns the layers only.
        config: a :class:`SegmentConfig`; ``**options`` override its fields (e.g. ``calibration=False``).
        progress: called as ``progress(fraction, stage)`` with fraction in 0..1.
        cancel: a ``threading.Event`` or a callable returning True to stop; raises :class:`Cancelled`.
        predictor: a ready :class:`~pointsam_engine.sam.predict.ChipPredictor` (or a stand-in) to reuse.

    Returns:
        :class:`SegmentResult` with layers ``instances``, ``boxes``, ``bboxes``, ``skipped`` and the report.
    """
    cfg = (config or SegmentConfig()).replace(**options) if options else (config or SegmentConfig())
    stages = _Stages()
    notify = progress or (lambda fraction, stage: None)
    check_segment_inputs(raster, points, output, cfg)
    notify(0.0, "reading")
    with Raster(raster, bands=cfg.bands, nodata=cfg.nodata, assume_crs=cfg.assume_crs, chip_scale=cfg.chip_scale) as ras:
        grid = {"transform": list(ras.transform)[:6], "shape": [ras.height, ras.width], "crs": ras.crs.to_wkt()}
        with stages("normalize"):
            norm = compute_normalization(ras, cfg.stretch, cfg.sar_db)
        with stages("points"):
            table = read_points(points, ras.crs, layer=cfg.layer, instance_field=cfg.instance_field,
                                label_field=cfg.label_field, class_field=cfg.class_field)
            inside, reasons = locate_on_raster(table, ras, points, raster)
            instances, unattached = group_instances(table.subset(inside))
        if not instances:
            raise PointsError(f"no positive point of {points} lies on data in {raster}; "
                              "give at least one point with label 1 inside the raster")
        check_cancel(cancel)
        with stages("model"):
            predictor = predictor or make_predictor(cfg)
        size = predictor.chip_size
        pos_w = to_working_each(ras, [inst.pos for inst in instances])
        neg_w = to_working_each(ras, [inst.neg for inst in instances])
        anchors = np.array([p.mean(axis=0) for p in pos_w])
        with stages("plan"):
            plan = plan_chips(anchors[:, 1], anchors[:, 0], ras.working_shape, size, cfg.chip_margin * size)
        max_hole_px, tolerance = grid_tolerances(ras, cfg.max_hole_area, cfg.simplify)
        with rasterio.Env():  # one GDAL environment for every mask traced, not one per object
            run = segment_chips(ras, norm, predictor, plan, pos_w, neg_w, cfg, max_hole_px, stages, notify, cancel)
            notify(0.9, "objects larger than a chip")
            coarse = retry_coarser(raster, cfg, norm, predictor, instances, run, max_hole_px, stages, cancel, notify)
        notify(0.92, "vectorizing")
        with stages("vectorize"):
            layers, counts = build_layers(ras, norm, instances, run, table, reasons, unattached, cfg, tolerance,
                                           predictor.label, raster, max_hole_px)
        report = {
            "raster": str(raster), "points_path": str(points), "crs": ras.crs.to_string(),
            "points": len(table), "objects": len(instances), "instances": len(layers["instances"]),
            "skipped": len(layers["skipped"]), "chips": plan.encoder_passes, "encoder_passes": run.encoder_passes,
            "encoder_passes_per_point": run.encoder_passes / len(instances),
            "calibrated": int(run.calibrated.sum()), "calibration": cfg.calibration,
            "overlaps_before_calibration": len(run.pairs_before), "overlaps_after_calibration": len(run.pairs_after),
            "overlaps_after": counts["overlaps_after"], "clicks_not_held": counts["clicks_not_held"], **coarse,
            "model": predictor.label, "stretch": norm.to_dict(),
            "precision": getattr(predictor, "precision", "fp32"),  # the encoder's arithmetic (stand-ins: fp32)
            "chip_size": size, "chip_scale": cfg.chip_scale, "version": __version__,
            "seconds": {k: round(v, 3) for k, v in stages.seconds.items()},
        }
    check_cancel(cancel)
    written = None
    if output is not None:
        notify(0.97, "writing")
        start = time.perf_counter()
        metadata = {"pointsam_version": __version__, "pointsam_model": predictor.label,
                    "pointsam_stretch": norm.to_dict(), "pointsam_grid": grid,
                    "pointsam_report": {k: v for k, v in report.items() if k != "seconds"}}
        written = write_geopackage(layers, output, overwrite=cfg.overwrite, metadata=metadata,
                                   commit=lambda: _commit(cancel))
        report["seconds"]["write"] = round(time.perf_counter() - start, 3)
        report["output"] = str(written)
    notify(1.0, "done")
    return SegmentResult(layers, report, written)


