"""``segment()``: a raster and a point layer become instance polygons, boxes and a run report.

Data path: raster (stretch once) -> points (reproject, locate, group) -> chips (greedy cover) ->
per chip: encode once, decode every object, calibrate, settle pixels shared inside the chip ->
as soon as no later chip can meet a chip: settle pixels shared with its neighbours and trace its
objects -> simplify as one coverage -> measure -> GeoPackage (atomic; an existing one keeps its other layers).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely

from . import __version__
from .calibration import calibrate, overlapping_pairs, resolve_overlaps
from .chips import Chip, ChipPlan, finalization_schedule, neighbours, plan_chips
from .config import SegmentConfig
from .errors import Cancelled, PointsError
from .masks import CLICK_LOGIT, MaskPatch, Prompt
from .measure import Measurer, grid_tolerances, pixel_metres
from .memory import release_freed_memory
from .output import check_distinct, check_file_target, check_folder, check_target, write_geopackage
from .points import Instance, PointTable, group_instances, locate_on_raster, read_points
from .raster import Raster, compute_normalization
from .regularize import regularize
from .sam.cache import EmbeddingCache, embedding_key
from .vectorize import (
    axis_boxes,
    clean_mask,
    hold_clicks,
    oriented_boxes,
    overlapping,
    remove_overlaps,
    simplify_coverage,
    simplify_each,
    to_map,
    trace,
    trace_many,
)

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


def _check_cancel(cancel) -> None:
    if cancel is None:
        return
    if cancel.is_set() if hasattr(cancel, "is_set") else cancel():
        raise Cancelled("the run was cancelled; nothing was written")


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
        _check_cancel(cancel)


def load_configured_model(cfg: SegmentConfig):
    """The model a config asks for (``model``, ``model_type``, ``device``), with its ``adapter`` applied."""
    from .sam.model import load_model

    model = load_model(cfg.model, model_type=cfg.model_type, device=cfg.device, precision=cfg.precision)
    if cfg.adapter:
        from .sam.adapter import apply_adapter

        model = apply_adapter(model, cfg.adapter)
    return model


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
        _check_cancel(cancel)
        with stages("model"):
            predictor = predictor or make_predictor(cfg)
        size = predictor.chip_size
        pos_w = _to_working_each(ras, [inst.pos for inst in instances])
        neg_w = _to_working_each(ras, [inst.neg for inst in instances])
        anchors = np.array([p.mean(axis=0) for p in pos_w])
        with stages("plan"):
            plan = plan_chips(anchors[:, 1], anchors[:, 0], ras.working_shape, size, cfg.chip_margin * size)
        max_hole_px, tolerance = grid_tolerances(ras, cfg.max_hole_area, cfg.simplify)
        with rasterio.Env():  # one GDAL environment for every mask traced, not one per object
            run = _segment_chips(ras, norm, predictor, plan, pos_w, neg_w, cfg, max_hole_px, stages, notify, cancel)
        notify(0.92, "vectorizing")
        with stages("vectorize"):
            layers, counts = _build_layers(ras, instances, run, table, reasons, unattached, cfg, tolerance,
                                           predictor.label, raster, max_hole_px)
        report = {
            "raster": str(raster), "points_path": str(points), "crs": ras.crs.to_string(),
            "points": len(table), "objects": len(instances), "instances": len(layers["instances"]),
            "skipped": len(layers["skipped"]), "chips": plan.encoder_passes, "encoder_passes": run.encoder_passes,
            "encoder_passes_per_point": run.encoder_passes / len(instances),
            "calibrated": int(run.calibrated.sum()), "calibration": cfg.calibration,
            "overlaps_before_calibration": len(run.pairs_before), "overlaps_after_calibration": len(run.pairs_after),
            "overlaps_after": counts["overlaps_after"], "clicks_not_held": counts["clicks_not_held"],
            "model": predictor.label, "stretch": norm.to_dict(),
            "precision": getattr(predictor, "precision", "fp32"),  # the encoder's arithmetic (stand-ins: fp32)
            "chip_size": size, "chip_scale": cfg.chip_scale, "version": __version__,
            "seconds": {k: round(v, 3) for k, v in stages.seconds.items()},
        }
    _check_cancel(cancel)
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


def _to_working_each(ras: Raster, arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Each object's clicks on the working grid, transformed in one call (not one per object)."""
    arrays = [np.asarray(a, dtype=float).reshape(-1, 2) for a in arrays]
    flat = ras.to_working(np.vstack(arrays)) if arrays else np.zeros((0, 2))
    return np.split(flat, np.cumsum([len(a) for a in arrays])[:-1])


@dataclass
class _ChipRun:
    """What the chip loop leaves: per object a traced polygon (working-grid pixels) and its score."""

    polygons: List[Optional[object]]
    scores: np.ndarray
    calibrated: np.ndarray
    chip_of: np.ndarray
    pairs_before: set = field(default_factory=set)
    pairs_after: set = field(default_factory=set)
    encoder_passes: int = 0
    cut: set = field(default_factory=set)  # objects that gave pixels away since they were cleaned


def _chip_prompts(members_in: np.ndarray, pos_w, neg_w, chip: Chip, shape):
    """The prompts of the objects with a positive click on ``chip`` (chip pixels; clicks off the chip dropped):
    ``(object ids, prompts, positive clicks)``. All clicks are moved and sorted in one pass, so each
    object costs slices of one array, not array building of its own."""
    ids = members_in.astype(int)
    if not len(ids):
        return [], [], []
    groups = [pos_w[i] for i in ids] + [neg_w[i] for i in ids]
    sizes = [len(g) for g in groups]
    points = np.vstack(groups) - (chip.col0, chip.row0)
    owner = np.repeat(np.tile(np.arange(len(ids)), 2), sizes)
    label = np.repeat(np.repeat([1, 0], len(ids)), sizes)
    on_chip = (points[:, 0] >= 0) & (points[:, 0] < shape[1]) & (points[:, 1] >= 0) & (points[:, 1] < shape[0])
    order = np.lexsort((-label[on_chip], owner[on_chip]))  # by object, positives first, clicks in their order
    points, owner, label = points[on_chip][order], owner[on_chip][order], label[on_chip][order]
    counts = np.bincount(owner, minlength=len(ids))
    n_pos = np.bincount(owner, weights=label, minlength=len(ids)).astype(int)
    starts = np.cumsum(counts) - counts
    members, prompts, positives = [], [], []
    for k in np.flatnonzero(n_pos):
        start, end = starts[k], starts[k] + counts[k]
        members.append(int(ids[k]))
        positives.append(points[start:start + n_pos[k]])
        prompts.append(Prompt(points[start:end], label[start:end]))
    return members, prompts, positives


def _segment_chips(ras, norm, predictor, plan: ChipPlan, pos_w, neg_w, cfg, max_hole_px: float, stages, notify,
                   cancel) -> _ChipRun:
    """Encode each chip once, decode and calibrate its objects, and settle shared pixels chip by chip.

    Masks are held as rasters only until no later chip can meet them (:func:`finalization_schedule`),
    then traced to polygons, so memory follows one band of chips, not the whole layer.
    """
    n = len(pos_w)
    run = _ChipRun([None] * n, np.zeros(n), np.zeros(n, dtype=bool), plan.owner.copy())
    patches: Dict[int, MaskPatch] = {}
    held: Dict[int, List[int]] = {}
    schedule, near = finalization_schedule(plan.chips), neighbours(plan.chips)
    fingerprint = ras.fingerprint()
    for k, chip in enumerate(plan.chips):
        _check_cancel(cancel)
        notify(0.05 + 0.85 * k / len(plan.chips), f"encoding chip {k + 1}/{len(plan.chips)}")
        with stages("read"):
            image, valid = ras.read_chip(chip.row0, chip.col0, chip.size, norm)
        key = embedding_key(raster=fingerprint, stretch=norm.to_dict(), window=(chip.row0, chip.col0, chip.size),
                            scale=ras.scale, model=predictor.label)
        with stages("encode"):
            run.encoder_passes += bool(predictor.set_chip(image, valid, key))
        members, prompts, positives = _chip_prompts(np.concatenate([plan.assigned[k], plan.context[k]]), pos_w, neg_w,
                                                    chip, image.shape[:2])
        n_own = int(np.isin(members, plan.assigned[k]).sum())  # assigned members come first
        with stages("decode"):
            # neighbours owned by other chips are not decoded here: their clicks still count for
            # calibration (a mask holding them), and settling resolves any pixel they share later
            first = _predict_half(predictor, prompts[:n_own], cfg.decoder_batch) + [None] * (len(members) - n_own)
        run.pairs_before |= {_pair(members[a], members[b]) for a, b in overlapping_pairs(first) if a < n_own}
        results = list(first[:n_own])
        if cfg.calibration:
            with stages("calibrate"):
                redo, _ = calibrate(prompts, first, positives, range(n_own),
                                    lambda ps: _predict_half(predictor, ps, cfg.decoder_batch), cfg.calibration_iou)
            for a, patch in redo.items():
                results[a] = patch
                run.calibrated[members[a]] = True
        with stages("resolve"):
            results = [None if p is None else _clean(p, positives[a], max_hole_px) for a, p in enumerate(results)]
            shared = overlapping_pairs(results) if cfg.keep_overlaps else resolve_overlaps(results)
            run.pairs_after |= {_pair(members[a], members[b]) for a, b in shared}
            run.cut.update(members[a] for pair in ([] if cfg.keep_overlaps else shared) for a in pair)
        held[k] = members[:n_own]
        for a, patch in enumerate(results):
            if patch is not None:
                patches[members[a]] = _compact(patch.shifted(chip.row0, chip.col0))
                run.scores[members[a]] = patch.score
        for j in schedule[k]:
            with stages("resolve"):
                _settle(j, held, near, patches, pos_w, run, resolve=not cfg.keep_overlaps)
        release_freed_memory()
        notify(0.05 + 0.85 * (k + 1) / len(plan.chips), f"chip {k + 1}/{len(plan.chips)}")
    return run


def _settle(j: int, held, near, patches: Dict[int, MaskPatch], pos_w, run: _ChipRun, resolve: bool = True) -> None:
    """Give pixels shared with neighbouring chips' objects to the higher logit (unless ``resolve`` is off),
    then trace chip j's objects."""
    own = held.pop(j)
    if resolve:
        mine = [i for i in own if i in patches]
        nearby = mine + [i for m in near[j] if m in held for i in held[m] if i in patches]
        pairs = {_pair(nearby[a], nearby[b]) for a, b in resolve_overlaps([patches[i] for i in nearby], len(mine))}
        run.pairs_after |= pairs
        run.cut.update(i for pair in pairs for i in pair)
    kept = {}
    for i in own:
        patch = patches.pop(i, None)
        if patch is not None:  # a mask that gave pixels away may have lost the link to a part: drop that part
            mask = clean_mask(patch, pos_w[i], 0) if i in run.cut else patch.mask
            kept[i] = (patch.row0, patch.col0, mask)
        run.cut.discard(i)
    # once shared pixels are settled no two masks share one, so the chip's objects are traced in one pass
    traced = trace_many(kept) if resolve else {i: trace(keep, r, c) for i, (r, c, keep) in kept.items()}
    for i, polygon in traced.items():
        run.polygons[i] = polygon


def _predict_half(predictor, prompts: List[Prompt], batch: int) -> List[Optional[MaskPatch]]:
    """Decode a few prompts at a time and keep float16 logits, so a chip's float32 masks never pile up."""
    out: List[Optional[MaskPatch]] = []
    for start in range(0, len(prompts), batch):
        out += [_half(p) for p in predictor.predict(prompts[start:start + batch])]
    return out


def _half(patch: Optional[MaskPatch]) -> Optional[MaskPatch]:
    """Logits as float16: masks of a whole chip's objects are held at once, and comparisons need no more."""
    return None if patch is None else MaskPatch(patch.row0, patch.col0, patch.logits.astype(np.float16), patch.score)


def _compact(patch: MaskPatch) -> MaskPatch:
    """Cut to the mask's box and keep logits as float16 while the patch waits to be settled."""
    patch = patch.cropped()
    return MaskPatch(patch.row0, patch.col0, patch.logits.astype(np.float16), patch.score)


def _pair(a: int, b: int) -> tuple:
    return (min(a, b), max(a, b))


def _clean(patch: MaskPatch, clicks: np.ndarray, max_hole_px: float) -> Optional[MaskPatch]:
    """Fill small holes and keep only the parts holding a click; cut to the mask's box. The pixels of the
    object's own clicks that the mask holds get :data:`CLICK_LOGIT`, so settling shared pixels never gives
    them to a neighbour."""
    keep = clean_mask(patch, clicks, max_hole_px)
    logits = np.where(keep, np.maximum(patch.logits, 1e-3), np.minimum(patch.logits, -1e-3)).astype(np.float16)
    rows = np.floor(clicks[:, 1]).astype(int) - patch.row0
    cols = np.floor(clicks[:, 0]).astype(int) - patch.col0
    inside = (rows >= 0) & (rows < keep.shape[0]) & (cols >= 0) & (cols < keep.shape[1])
    rows, cols = rows[inside], cols[inside]
    logits[rows[keep[rows, cols]], cols[keep[rows, cols]]] = CLICK_LOGIT
    cleaned = MaskPatch(patch.row0, patch.col0, logits, patch.score).cropped()
    return cleaned if cleaned.logits.size else None


def _build_layers(ras, instances: Sequence[Instance], run: _ChipRun, table: PointTable, reasons,
                  unattached, cfg: SegmentConfig, tolerance: float, model_label: str, raster,
                  hole_px: float = 25.0) -> tuple:
    skip_reason: Dict[int, str] = {i: "empty mask" for i, g in enumerate(run.polygons) if g is None}
    live = [i for i in range(len(instances)) if run.polygons[i] is not None]
    masks = to_map([run.polygons[i] for i in live], ras.working_transform)
    if cfg.keep_overlaps:
        geoms = simplify_each(masks, tolerance)
    else:
        geoms = remove_overlaps(simplify_coverage(masks, tolerance), run.scores[live])
    unregularized = geoms
    pixel_m = pixel_metres(ras)
    geoms, iou_to_mask = regularize(geoms, masks, run.scores[live], cfg.regularize, ras.crs, pixel_m,
                                    min_hole_m2=hole_px * pixel_m ** 2, settle=not cfg.keep_overlaps)
    clicks = [instances[i].pos for i in live]
    geoms, holds = hold_clicks(geoms, masks, clicks, _click_pixels(ras, clicks), settle=not cfg.keep_overlaps)
    live_areas = Measurer(ras.crs).areas(geoms)  # m², geodesic: min_area is m² whatever the CRS
    small = [g is None or a < cfg.min_area for g, a in zip(geoms, live_areas)]
    for i, is_small in zip(live, small):
        if is_small:
            skip_reason[i] = "smaller than --min-area"
    kept = [k for k, s in enumerate(small) if not s]
    ids = [live[k] for k in kept]
    polys = np.array([geoms[k] for k in kept], dtype=object)
    areas = live_areas[kept]
    out_crs = cfg.out_crs or ras.crs
    series = gpd.GeoSeries(polys, crs=ras.crs).to_crs(out_crs)
    attrs = _attributes(instances, ids, run, areas, cfg, model_label, raster)
    attrs["regularized"] = np.full(len(ids), cfg.regularize != "none", dtype=bool)
    attrs["iou_to_mask"] = np.asarray(iou_to_mask, dtype=np.float64)[kept]
    attrs["holds_click"] = holds[kept]
    inst = gpd.GeoDataFrame(attrs, geometry=series.values, crs=series.crs)
    # a ship's box is its mask's: smoothing the hull must not shrink the length and width it reports
    box_source = gpd.GeoSeries(np.asarray(unregularized, dtype=object)[kept], crs=ras.crs).to_crs(out_crs).values \
        if cfg.regularize == "ships" else series.values
    rects = gpd.GeoSeries(oriented_boxes(box_source), crs=series.crs)
    angle, length, width = Measurer(series.crs).box_dimensions(rects.values)
    boxes = gpd.GeoDataFrame({**attrs, "angle_deg": angle, "length_m": length, "width_m": width},
                             geometry=rects.values, crs=series.crs)
    bboxes = gpd.GeoDataFrame(attrs, geometry=axis_boxes(series.values), crs=series.crs)
    skipped = _skipped_layer(table, reasons, instances, skip_reason, unattached, cfg, out_crs, ras.crs)
    overlaps_after = len(overlapping(series.values))
    counts = {"overlaps_after": overlaps_after, "clicks_not_held": int((~holds[kept]).sum())}
    return {"instances": inst, "boxes": boxes, "bboxes": bboxes, "skipped": skipped}, counts


def _click_pixels(ras: Raster, clicks: Sequence[np.ndarray]) -> List[np.ndarray]:
    """The working-grid pixel of each click as a square in map coordinates (one array per object)."""
    flat = np.vstack(clicks) if clicks else np.zeros((0, 2))
    corner = np.floor(ras.to_working(flat))
    squares = to_map(shapely.box(corner[:, 0], corner[:, 1], corner[:, 0] + 1, corner[:, 1] + 1), ras.working_transform)
    return np.split(squares, np.cumsum([len(c) for c in clicks])[:-1])


def _attributes(instances, ids, run: _ChipRun, areas, cfg, model_label, raster) -> dict:
    attrs = {"point_fid": np.array([instances[i].point_fid for i in ids], dtype=np.int64)}
    if cfg.instance_field:
        attrs["instance"] = pd.array([instances[i].key for i in ids]).astype(str) if ids else np.array([], dtype=str)
    if cfg.class_field:
        attrs["class"] = np.array([instances[i].cls for i in ids], dtype=object)
    attrs.update({
        "score": run.scores[ids].astype(np.float64),
        "area_m2": np.asarray(areas, dtype=np.float64),
        "calibrated": np.array([bool(run.calibrated[i]) for i in ids], dtype=bool),
        "n_pos": np.array([len(instances[i].pos) for i in ids], dtype=np.int32),
        "n_neg": np.array([len(instances[i].neg) for i in ids], dtype=np.int32),
        "chip": np.array([int(run.chip_of[i]) for i in ids], dtype=np.int32),
        "model": np.array([model_label] * len(ids), dtype=object),
        "source": np.array([Path(str(raster)).name] * len(ids), dtype=object),
    })
    return attrs


def _skipped_layer(table: PointTable, reasons, instances, skip_reason, unattached, cfg, out_crs, raster_crs):
    rows = dict(reasons)
    fid_row = {int(f): r for r, f in enumerate(table.fid)}
    for i, why in skip_reason.items():
        for fid in instances[i].pos_fids:
            rows.setdefault(fid_row[fid], why)
    for fid in unattached:
        rows.setdefault(fid_row[fid], "negative point with no object")
    order = sorted(rows)
    data = {"point_fid": table.fid[order].astype(np.int64),
            "label": table.label[order].astype(np.int32),
            "reason": np.array([rows[r] for r in order], dtype=object)}
    if cfg.class_field:
        data["class"] = np.array(table.cls[order], dtype=object)
    geometry = gpd.points_from_xy(table.x[order], table.y[order], crs=raster_crs)
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(geometry, crs=raster_crs).to_crs(out_crs).values, crs=out_crs)
