"""The batch's one result: every finished task's layers in one CRS, with a ``source`` raster field, objects that
meet across a raster (or band) edge settled, and the ``failed`` layer.

Inside one task no two objects overlap (the pipeline settles them). Two objects of different tasks can, where
rasters overlap or a mask reaches a band's edge; they are settled by the rule the pipeline applies to its own
outlines once they are polygons (:func:`pointsam_engine.vectorize.remove_overlaps`: the lower score gives way;
the per-pixel logits that settle masks inside one raster are not kept once outlines are traced). Then, as in
one raster, every object gets back its click pixels (:func:`pointsam_engine.vectorize.hold_clicks`, each pixel
on its own raster's working grid, taken from the neighbour that had it), its task's outline standing for the
mask the merge no longer has; ``holds_click`` is recomputed. The objects that changed are measured again (area,
boxes); one left empty, or under ``min_area``, is skipped with the reason. With ``keep_overlaps`` nothing is
settled, as in one raster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely

from ..config import FAILED, INSTANCES, SegmentConfig
from ..layers import click_pixels
from ..measure import Measurer
from ..raster import Raster
from ..vectorize import axis_boxes, hold_clicks, oriented_boxes, overlapping, polygonal_each, remove_overlaps
from .assign import Footprint, Plan

LAYERS = (INSTANCES, "boxes", "bboxes", "skipped")
TAKEN = "taken by a neighbour across a raster edge"


def read_task_layers(gpkg: Path, out_crs) -> Dict[str, gpd.GeoDataFrame]:
    """A finished task's four layers in ``out_crs``; ``skipped`` gains the ``source`` field the others have."""
    layers = {name: pyogrio.read_dataframe(str(gpkg), layer=name).to_crs(out_crs) for name in LAYERS}
    source = layers[INSTANCES]["source"].iloc[0] if len(layers[INSTANCES]) else _source_of(gpkg)
    layers["skipped"]["source"] = np.array([source] * len(layers["skipped"]), dtype=object)
    return layers


def _source_of(gpkg: Path) -> str:
    info = pyogrio.read_info(str(gpkg), layer=INSTANCES).get("dataset_metadata") or {}
    report = info.get("pointsam_report", "{}")
    import json

    return Path(json.loads(report).get("raster", "")).name


def merge(task_layers: Sequence[Dict[str, gpd.GeoDataFrame]], rasters: Sequence[str], skipped: gpd.GeoDataFrame,
          failed: List[Tuple[str, str, str]], plan: Plan, cfg: SegmentConfig, out_crs) -> tuple:
    """The merged layers (``instances``, ``boxes``, ``bboxes``, ``skipped``, ``failed``) and the number of
    objects settled across edges. ``rasters``: the raster of each of ``task_layers``; ``failed``: ``(task id,
    raster, reason)``; ``plan``: the batch's plan (the point layer, each object's clicks, the footprints)."""
    merged = {name: _concat([t[name] for t in task_layers], out_crs) for name in LAYERS}
    merged["skipped"] = _concat([merged["skipped"], skipped.to_crs(out_crs)], out_crs)
    row_raster = np.repeat(np.asarray(list(rasters), dtype=object), [len(t[INSTANCES]) for t in task_layers])
    settled = 0 if cfg.keep_overlaps else settle_across_edges(merged, row_raster, plan, cfg, out_crs)
    merged["skipped"] = merged["skipped"].sort_values("point_fid", kind="stable").reset_index(drop=True)
    merged[FAILED] = failed_layer(failed, plan.footprints, out_crs)
    return merged, settled


def _concat(frames: Sequence[gpd.GeoDataFrame], crs) -> gpd.GeoDataFrame:
    frames = [f for f in frames if f is not None and len(f.columns)]
    if not frames:
        return gpd.GeoDataFrame(geometry=gpd.GeoSeries([], crs=crs), crs=crs)
    out = pd.concat([f.to_crs(crs) for f in frames], ignore_index=True)
    return gpd.GeoDataFrame(out, geometry=frames[0].geometry.name, crs=crs)


def settle_across_edges(layers: Dict[str, gpd.GeoDataFrame], row_raster: np.ndarray, plan: Plan, cfg: SegmentConfig,
                        crs) -> int:
    """Where objects of different tasks overlap, the lower score gives way, then every object takes back its
    click pixels; ``holds_click``, boxes and areas follow; an object left empty or too small is skipped at its
    click. ``row_raster``: the raster of each instance. Returns how many objects changed."""
    inst = layers[INSTANCES]
    geoms = np.asarray(inst.geometry.values, dtype=object)
    if not overlapping(geoms):
        return 0
    settled = polygonal_each(remove_overlaps(geoms, inst["score"].to_numpy()))
    clicks, pixels = click_squares(inst["point_fid"].to_numpy(), row_raster, plan, cfg, crs)
    settled, holds = hold_clicks(settled, geoms, clicks, pixels)
    for name in (INSTANCES, "boxes", "bboxes"):
        layers[name]["holds_click"] = layers[name]["holds_click"].astype(bool).to_numpy() & holds
    changed = np.flatnonzero(~shapely.equals(settled, geoms)).tolist()
    measure = Measurer(crs)
    areas = measure.areas(np.asarray([settled[i] for i in changed], dtype=object))
    gone = {i: (TAKEN if settled[i] is None or settled[i].is_empty else "smaller than --min-area")
            for i, a in zip(changed, areas) if settled[i] is None or settled[i].is_empty or a < cfg.min_area}
    kept = [i for i in changed if i not in gone]
    for name in (INSTANCES, "boxes", "bboxes"):
        layers[name]["area_m2"] = layers[name]["area_m2"].astype(float)
        layers[name].loc[kept, "area_m2"] = [a for i, a in zip(changed, areas) if i in kept]
    if kept:
        _redraw(layers, kept, np.asarray([settled[i] for i in kept], dtype=object), measure, crs)
    if gone:
        clicks_of = plan.points.geometry.to_crs(crs)
        layers["skipped"] = _concat([layers["skipped"], _as_skipped(inst, gone, clicks_of, crs)], crs)
        for name in (INSTANCES, "boxes", "bboxes"):
            layers[name] = layers[name].drop(index=list(gone)).reset_index(drop=True)
    return len(changed)


def _redraw(layers: Dict[str, gpd.GeoDataFrame], rows: List[int], outlines: np.ndarray, measure: Measurer, crs) -> None:
    """New outlines for ``rows``, and their oriented and axis boxes."""
    inst = layers[INSTANCES]
    inst.loc[rows, inst.geometry.name] = gpd.GeoSeries(outlines, index=rows, crs=crs)
    rects = oriented_boxes(outlines)
    angle, length, width = measure.box_dimensions(rects)
    boxes = layers["boxes"]
    boxes.loc[rows, boxes.geometry.name] = gpd.GeoSeries(rects, index=rows, crs=crs)
    boxes.loc[rows, "angle_deg"], boxes.loc[rows, "length_m"], boxes.loc[rows, "width_m"] = angle, length, width
    layers["bboxes"].loc[rows, layers["bboxes"].geometry.name] = gpd.GeoSeries(axis_boxes(outlines), index=rows, crs=crs)


def click_squares(point_fids: np.ndarray, row_raster: np.ndarray, plan: Plan, cfg: SegmentConfig, crs) -> tuple:
    """Each object's positive clicks ((N, 2) x, y) and their pixels on its own raster's working grid (the
    squares the pipeline keeps in its outlines), both in ``crs``: what :func:`hold_clicks` takes."""
    clicks: List[np.ndarray] = [np.zeros((0, 2))] * len(point_fids)
    pixels: List[np.ndarray] = [np.zeros(0, dtype=object)] * len(point_fids)
    for path in dict.fromkeys(row_raster.tolist()):
        mine = np.flatnonzero(row_raster == path)
        with Raster(path, bands=cfg.bands, nodata=cfg.nodata, assume_crs=cfg.assume_crs, chip_scale=cfg.chip_scale) as ras:
            xy = [plan.clicks_in(ras.crs, fid) for fid in point_fids[mine]]
            squares = np.concatenate(click_pixels(ras, xy))
            native = ras.crs
        flat = np.vstack(xy)
        points = gpd.GeoSeries(shapely.points(flat), crs=native).to_crs(crs).values
        squares = np.asarray(gpd.GeoSeries(squares, crs=native).to_crs(crs).values, dtype=object)
        cuts = np.cumsum([len(c) for c in xy])[:-1]
        for row, c, p in zip(mine, np.split(shapely.get_coordinates(points), cuts), np.split(squares, cuts)):
            clicks[row], pixels[row] = c, p
    return clicks, pixels


def _as_skipped(inst: gpd.GeoDataFrame, gone: Dict[int, str], clicks: gpd.GeoSeries, crs) -> gpd.GeoDataFrame:
    rows = inst.loc[list(gone)]
    data = {"point_fid": rows["point_fid"].to_numpy(), "label": np.ones(len(rows), dtype=np.int32),
            "reason": np.array(list(gone.values()), dtype=object), "source": rows["source"].to_numpy()}
    if "class" in rows:
        data["class"] = rows["class"].to_numpy()
    points = shapely.get_geometry(clicks.loc[rows["point_fid"].to_numpy()].values, 0)
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(points, crs=crs).values, crs=crs)


def failed_layer(failed: List[Tuple[str, str, str]], footprints: Dict[str, Footprint], crs) -> gpd.GeoDataFrame:
    """One row per failed task: ``task``, ``source`` (the raster's file name), ``raster`` (its path), ``reason``;
    its geometry the raster's outline where its header could be read."""
    geoms = []
    for _, raster, _ in failed:
        fp = footprints.get(raster)
        geoms.append(gpd.GeoSeries([fp.polygon()], crs=fp.crs).to_crs(crs).iloc[0] if fp else None)
    return gpd.GeoDataFrame({"task": np.array([t for t, _, _ in failed], dtype=object),
                             "source": np.array([Path(r).name for _, r, _ in failed], dtype=object),
                             "raster": np.array([r for _, r, _ in failed], dtype=object),
                             "reason": np.array([why for _, _, why in failed], dtype=object)},
                            geometry=gpd.GeoSeries(geoms, crs=crs).values, crs=crs)
