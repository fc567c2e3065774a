"""Validation on held-out ground: the engine's own ``segment`` on the validation clicks, with the current weights.

Without reference polygons, point-based measures: the share of held-out clicks whose polygon holds exactly
one click of the layer (its own), and the merge rate (polygons holding two or more). With reference
polygons (``--val-polygons``), the paper's per-instance mIoU and F1 through the engine's ``evaluate``.
Each held-out object's polygon area is returned too, so that the caller can follow how the masks grow
against the base model's (:func:`area_growth`): the way self-training drifts, which the click counts miss.
Validation clicks never reach the training chips (:func:`training.regions.block_split`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import geopandas as gpd
import numpy as np
import pyogrio
import shapely

from pointsam_engine.config import SegmentConfig
from pointsam_engine.evaluate import Grid, score_image, summarize
from pointsam_engine.pipeline import segment
from pointsam_engine.sam.cache import EmbeddingCache
from pointsam_engine.sam.model import LoadedModel
from pointsam_engine.sam.predict import ChipPredictor

from .regions import Region


def write_validation_clicks(region: Region, path) -> Optional[Path]:
    """The region's held-out objects as a point layer (fields ``obj`` and ``positive``); None when it has none."""
    rows = []
    for k in np.flatnonzero(region.val):
        inst = region.instances[k]
        rows += [(int(k), 1, x, y) for x, y in inst.pos] + [(int(k), 0, x, y) for x, y in inst.neg]
    if not rows:
        return None
    obj, positive, x, y = map(np.array, zip(*rows))
    frame = gpd.GeoDataFrame({"obj": obj, "positive": positive}, geometry=shapely.points(x, y), crs=region.crs)
    pyogrio.write_dataframe(frame, path, layer="points")
    return Path(path)


def validate(model: LoadedModel, regions: Sequence[Region], cfg: SegmentConfig,
             val_polygons: Optional[Sequence[Optional[str]]] = None) -> Tuple[dict, Dict[str, float]]:
    """Segment every region's held-out clicks with ``model``; the figures, and each object's polygon area."""
    singles = merges = total = 0
    areas: Dict[str, float] = {}
    scores = []
    predictor = ChipPredictor(model, EmbeddingCache(0), cfg.decoder_batch)  # weights change: never reuse embeddings
    options = cfg.replace(instance_field="obj", label_field="positive", layer="points", class_field=None)
    with tempfile.TemporaryDirectory() as tmp:
        for i, region in enumerate(regions):
            clicks = write_validation_clicks(region, Path(tmp) / f"val{i}.gpkg")
            if clicks is None:
                continue
            result = segment(region.raster, clicks, None, options, predictor=predictor)
            polygons = result.layers["instances"]
            areas.update(object_areas(polygons, prefix=f"{i}:"))
            all_clicks = np.vstack([inst.pos for inst in region.instances])
            s, m = _click_counts(polygons, all_clicks, region.crs)
            singles, merges, total = singles + s, merges + m, total + int(region.val.sum())
            truth = val_polygons[i] if val_polygons else None
            if truth:
                points = pyogrio.read_dataframe(clicks, fid_as_index=True)
                points = points[points["positive"] == 1]
                scores.append(score_image(polygons, pyogrio.read_dataframe(truth), Grid.from_raster(region.raster), points))
    figures = {"val_objects": total, "single_click_share": singles / total if total else float("nan"),
               "merge_rate": merges / total if total else float("nan")}
    if scores:
        summary = summarize(scores)
        figures.update(miou=summary["miou"], mf1=summary["mf1"])
    return figures, areas


def area_growth(areas: Dict[str, float], reference: Dict[str, float]) -> float:
    """Median over the objects both hold of ``areas`` / ``reference`` (1: no change); NaN when none is shared."""
    ratios = [areas[k] / reference[k] for k in areas.keys() & reference.keys() if reference[k] > 0]
    return float(np.median(ratios)) if ratios else float("nan")


def object_areas(polygons: gpd.GeoDataFrame, prefix: str = "") -> Dict[str, float]:
    """Each object's polygon area (its parts summed), keyed by ``prefix`` + the ``instance`` field: the engine's
    ``area_m2`` (on the ellipsoid, whatever the CRS) where the layer has it, else the planar area."""
    if len(polygons) == 0:
        return {}
    area = polygons["area_m2"] if "area_m2" in polygons else polygons.geometry.area
    by_object = area.groupby(polygons["instance"].astype(str)).sum()
    return {prefix + key: float(area) for key, area in by_object.items()}


def _click_counts(polygons: gpd.GeoDataFrame, clicks: np.ndarray, crs) -> tuple:
    """How many polygons hold exactly one of ``clicks`` (raster CRS), and how many hold two or more."""
    if len(polygons) == 0:
        return 0, 0
    geoms = polygons.to_crs(crs).geometry.values
    tree = shapely.STRtree(geoms)
    hits = tree.query(shapely.points(clicks), predicate="within")
    counts = np.bincount(hits[1], minlength=len(geoms))
    return int((counts == 1).sum()), int((counts >= 2).sum())
