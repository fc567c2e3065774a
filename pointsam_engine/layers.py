"""The output layers from the traced objects: simplified as one coverage, regularized, each click held,
measured on the ellipsoid, with their fields; the oriented and axis boxes; the skipped clicks."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from .chip_loop import ChipRun
from .config import SegmentConfig
from .measure import Measurer, pixel_metres
from .points import Instance, PointTable
from .raster import Normalization, Raster, grid_outline
from .regularize import regularize
from .vectorize import (
    axis_boxes,
    hold_clicks,
    oriented_boxes,
    overlapping,
    remove_overlaps,
    simplify_coverage,
    simplify_each,
    to_map,
)
from .walls import wall_directions


def build_layers(ras, norm: Normalization, instances: Sequence[Instance], run: ChipRun, table: PointTable, reasons,
                  unattached, cfg: SegmentConfig, tolerance: float, model_label: str, raster,
                  hole_px: float = 25.0) -> tuple:
    skip_reason: Dict[int, str] = {i: "empty mask" for i, g in enumerate(run.polygons) if g is None}
    live = [i for i in range(len(instances)) if run.polygons[i] is not None]
    traced = np.array([run.polygons[i] for i in live], dtype=object)
    masks = to_map(traced, ras.working_transform)
    # simplified on the grid, so the same pixels give the same outlines whatever the raster's georeferencing
    simplify = simplify_each if cfg.keep_overlaps else simplify_coverage
    geoms = to_map(simplify(traced, tolerance / ras.pixel_size), ras.working_transform)
    if not cfg.keep_overlaps:
        geoms = remove_overlaps(geoms, run.scores[live])
    unregularized = geoms
    pixel_m = pixel_metres(ras)
    walls = wall_directions(ras, norm, traced) if cfg.regularize == "buildings" else None
    geoms, iou_to_mask = regularize(geoms, masks, run.scores[live], cfg.regularize, ras.crs, pixel_m,
                                    min_hole_m2=hole_px * pixel_m ** 2, settle=not cfg.keep_overlaps,
                                    extent=grid_outline(ras.transform, ras.width, ras.height), walls=walls)
    if cfg.regularize != "none" and not cfg.keep_overlaps:
        # the round trip through the metric frame can leave slivers in degrees: the lower score gives way
        geoms = remove_overlaps(geoms, run.scores[live])
    clicks = [instances[i].pos for i in live]
    geoms, holds = hold_clicks(geoms, masks, clicks, click_pixels(ras, clicks), settle=not cfg.keep_overlaps)
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


def click_pixels(ras: Raster, clicks: Sequence[np.ndarray]) -> List[np.ndarray]:
    """The working-grid pixel of each click as a square in map coordinates (one array per object)."""
    flat = np.vstack(clicks) if clicks else np.zeros((0, 2))
    corner = np.floor(ras.to_working(flat))
    squares = to_map(shapely.box(corner[:, 0], corner[:, 1], corner[:, 0] + 1, corner[:, 1] + 1), ras.working_transform)
    return np.split(squares, np.cumsum([len(c) for c in clicks])[:-1])


def _attributes(instances, ids, run: ChipRun, areas, cfg, model_label, raster) -> dict:
    attrs = {"point_fid": np.array([instances[i].point_fid for i in ids], dtype=np.int64)}
    if cfg.instance_field:
        attrs["instance"] = pd.array([instances[i].key for i in ids]).astype(str) if ids else np.array([], dtype=str)
    if cfg.class_field:
        attrs["class"] = np.array([instances[i].cls for i in ids], dtype=object)
    attrs.update({
        "score": run.scores[ids].astype(np.float64),
        "area_m2": np.asarray(areas, dtype=np.float64),
        "calibrated": np.array([bool(run.calibrated[i]) for i in ids], dtype=bool),
        "coarse": run.coarse[ids].astype(bool),
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
