"""The paper's metric: per-instance IoU and F1 (Dice) on the raster grid, per image, then over images.

Each predicted instance is paired with the truth polygon that holds its prompt point (matched through
``point_fid`` when the points are given; otherwise the truth it overlaps most). A click that produced
no prediction counts as IoU 0; a click off the raster's grid is not scored (segment skipped it: there was
no image there). Also counted: missed clicks, clicks off the grid, truth objects hit by two clicks, and merges
(a prediction covering at least half of a truth object other than its own).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import geopandas as gpd
import numpy as np
import pyogrio
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.windows import Window, from_bounds
from rasterio.windows import transform as window_transform

from .config import INSTANCES
from .errors import PointsError, RasterError
from .output import no_pam_sidecars
from .raster import grid_outline, grid_position

no_pam_sidecars()

MERGE_COVER = 0.5  # share of another truth object a prediction must cover to count as a merge


@dataclass
class Grid:
    """The pixel grid masks are compared on."""

    transform: Affine
    shape: tuple  # (rows, cols)
    crs: CRS

    def to_dict(self) -> dict:
        return {"transform": list(self.transform)[:6], "shape": list(self.shape), "crs": self.crs.to_wkt()}

    @classmethod
    def from_dict(cls, data: dict) -> "Grid":
        return cls(Affine(*data["transform"]), tuple(data["shape"]), CRS.from_user_input(data["crs"]))

    def footprint(self):
        """The area the grid covers, a polygon in its CRS."""
        return grid_outline(self.transform, self.shape[1], self.shape[0])

    def holds(self, points: gpd.GeoSeries) -> np.ndarray:
        """Whether each point (in the grid's CRS) lies on the grid's pixels, by segment's rule."""
        centres = shapely.centroid(np.asarray(points.values))
        return grid_position(self.transform, self.shape[1], self.shape[0], shapely.get_x(centres),
                             shapely.get_y(centres))[0]

    @classmethod
    def from_raster(cls, path) -> "Grid":
        import rasterio

        if not os.path.isfile(path):
            raise RasterError(f"raster {path} does not exist; give the image the predictions were made from")
        try:
            src = rasterio.open(path)
        except rasterio.errors.RasterioIOError:
            raise RasterError(f"raster {path}: GDAL cannot read it; give the image the predictions were made "
                              "from") from None
        with src:
            if src.crs is None:
                raise RasterError(f"raster {path} has no CRS; evaluation needs a georeferenced grid")
            return cls(src.transform, (src.height, src.width), src.crs)


@dataclass
class ImageScore:
    miou: float
    mf1: float
    instances: int
    missed_points: int = 0
    truth_hit_twice: int = 0
    merges: int = 0
    clicks_on_background: int = 0
    clicks_off_raster: int = 0
    ious: List[float] = field(default_factory=list)


def pixel_scores(pred, truth, grid: Grid) -> tuple:
    """(IoU, F1) of two polygons rasterized on the grid, in the window around both."""
    union_bounds = shapely.union(pred, truth).bounds
    win = from_bounds(*union_bounds, transform=grid.transform).round_offsets(op="floor").round_lengths(op="ceil")
    win = Window(win.col_off - 1, win.row_off - 1, win.width + 2, win.height + 2)
    t = window_transform(win, grid.transform)
    shape = (int(win.height), int(win.width))
    p = rasterize([(pred, 1)], out_shape=shape, transform=t, dtype="uint8").astype(bool)
    g = rasterize([(truth, 1)], out_shape=shape, transform=t, dtype="uint8").astype(bool)
    inter, total = int((p & g).sum()), int(p.sum() + g.sum())
    union = total - inter
    return (inter / union if union else 0.0), (2 * inter / total if total else 0.0)


def score_image(pred: gpd.GeoDataFrame, truth: gpd.GeoDataFrame, grid: Grid,
                points: Optional[gpd.GeoDataFrame] = None) -> ImageScore:
    """Score one image: predictions (with ``point_fid``), truth polygons, optional clicks (indexed by fid)."""
    pred, truth = pred.to_crs(grid.crs), truth.to_crs(grid.crs)
    tgeoms = truth.geometry.values
    tree = shapely.STRtree(tgeoms)
    ious, f1s = [], []
    result = ImageScore(0.0, 0.0, 0)
    if points is not None:
        points = points.to_crs(grid.crs)
        held = grid.holds(points.geometry)
        result.clicks_off_raster = int((~held).sum())
        points = points[held]
        clicks = points.geometry.values
        holder = {}
        for fid, click in zip(points.index, clicks):
            hits = tree.query(click, predicate="within")
            if len(hits):
                holder[int(fid)] = int(hits[0])
        result.clicks_on_background = len(points) - len(holder)
        counts = np.bincount(list(holder.values()), minlength=len(tgeoms))
        result.truth_hit_twice = int((counts >= 2).sum())
        by_fid = dict(zip(pred["point_fid"].astype(int), pred.geometry.values))
        pairs = []
        for fid, t in holder.items():
            if fid in by_fid:
                pairs.append((by_fid[fid], t))
            else:
                result.missed_points += 1
                ious.append(0.0)
                f1s.append(0.0)
    else:
        pairs = []
        for geom in pred.geometry.values:
            hits = tree.query(geom, predicate="intersects")
            if len(hits):
                pairs.append((geom, int(hits[np.argmax([geom.intersection(tgeoms[h]).area for h in hits])])))
            else:
                ious.append(0.0)
                f1s.append(0.0)
    for geom, t in pairs:
        iou, f1 = pixel_scores(geom, tgeoms[t], grid)
        ious.append(iou)
        f1s.append(f1)
        others = [h for h in tree.query(geom, predicate="intersects") if h != t]
        if any(geom.intersection(tgeoms[h]).area >= MERGE_COVER * tgeoms[h].area for h in others):
            result.merges += 1
    result.ious = ious
    result.instances = len(ious)
    result.miou = float(np.mean(ious)) if ious else 0.0
    result.mf1 = float(np.mean(f1s)) if f1s else 0.0
    return result


def summarize(images: Sequence[ImageScore]) -> dict:
    """Mean over images of the per-image means, plus the summed counts."""
    return {
        "miou": float(np.mean([s.miou for s in images])) if images else 0.0,
        "mf1": float(np.mean([s.mf1 for s in images])) if images else 0.0,
        "images": len(images),
        "instances": int(sum(s.instances for s in images)),
        "missed_points": int(sum(s.missed_points for s in images)),
        "truth_hit_twice": int(sum(s.truth_hit_twice for s in images)),
        "merges": int(sum(s.merges for s in images)),
        "clicks_on_background": int(sum(s.clicks_on_background for s in images)),
        "clicks_off_raster": int(sum(s.clicks_off_raster for s in images)),
    }


def read_grid(pred_path, raster=None, pred_layer: str = INSTANCES) -> Grid:
    """The grid to compare on: ``raster`` when given, else the one the engine recorded in the GeoPackage."""
    if raster is not None:
        return Grid.from_raster(raster)
    meta = pyogrio.read_info(str(pred_path), layer=pred_layer).get("dataset_metadata") or {}
    if "pointsam_grid" not in meta:
        raise PointsError(f"{pred_path} does not record its raster grid; pass --raster with the image it was made from")
    return Grid.from_dict(json.loads(meta["pointsam_grid"]))


def evaluate_files(pred_path, truth_path, points_path=None, *, raster=None, truth_layer=None,
                   points_layer=None, pred_layer: str = INSTANCES) -> dict:
    """Score a PointSAM GeoPackage against truth polygons; returns :func:`summarize` of the one image."""
    grid = read_grid(pred_path, raster, pred_layer)
    pred = gpd.read_file(pred_path, layer=pred_layer)
    truth = gpd.read_file(truth_path, layer=truth_layer) if truth_layer else gpd.read_file(truth_path)
    points = None
    if points_path is not None:
        points = pyogrio.read_dataframe(points_path, layer=points_layer, fid_as_index=True)
    grid_name = f"the raster {raster}" if raster else f"the raster {pred_path} was made from"
    _check_scoreable(truth, points, grid, truth_path, points_path, grid_name)
    score = score_image(pred, truth, grid, points)
    if points is not None and score.clicks_off_raster == len(points):
        raise PointsError(f"no point of {points_path} lies on {grid_name}; give the clicks the predictions were made "
                          "from")
    return summarize([score])


def _check_scoreable(truth: gpd.GeoDataFrame, points: Optional[gpd.GeoDataFrame], grid: Grid, truth_path,
                     points_path, grid_name: str) -> None:
    """Refuse, in one line, truth or clicks that leave nothing to score on the predictions' grid."""
    area = grid.footprint()
    if truth.empty:
        raise PointsError(f"the truth {truth_path} has no polygons; give the reference polygons of the area")
    if not truth.to_crs(grid.crs).intersects(area).any():
        raise PointsError(f"no truth polygon of {truth_path} lies on {grid_name}; give "
                          "the reference polygons of that area")
    if points is not None and points.empty:
        raise PointsError(f"the points {points_path} have no features; give the clicks the predictions were made from")


def check_inputs(pred_path, truth_path, points_path=None, *, raster=None, truth_layer=None, points_layer=None,
                 pred_layer: str = INSTANCES) -> None:
    """Refuse, in one line, inputs :func:`evaluate_files` cannot read: missing files or layers, no CRS,
    predictions without ``point_fid`` when the points are given, a raster GDAL cannot open."""
    layers = [("predictions", pred_path, pred_layer), ("truth", truth_path, truth_layer)]
    if points_path is not None:
        layers.append(("points", points_path, points_layer))
    for what, path, layer in layers:
        info = _layer_info(what, path, layer)
        kind = str(info.get("geometry_type") or "").lower()
        wanted = "point" if what == "points" else "polygon"
        if wanted not in kind:
            raise PointsError(f"the {what} {path} hold {kind or 'no geometries'}, not {wanted}s; give "
                              + ("the click layer" if what == "points" else
                                 "the instances layer pointsam segment wrote" if what == "predictions" else
                                 "the reference polygons"))
        if info.get("crs") is None:
            raise PointsError(f"the {what} {path} have no CRS; assign one (e.g. in QGIS, Layer CRS) and save again")
        if what == "predictions" and points_path is not None and "point_fid" not in list(info["fields"]):
            raise PointsError(f"the predictions {path} (layer {pred_layer}) have no point_fid field; give the "
                              "instances layer pointsam segment wrote, which pairs each object with its click")
    if raster is not None:
        Grid.from_raster(raster)
    else:
        read_grid(pred_path, None, pred_layer)


def _layer_info(what: str, path, layer: Optional[str]) -> dict:
    """pyogrio's description of one layer of a vector file, or a one-line :class:`PointsError`."""
    if not os.path.exists(path):
        raise PointsError(f"the {what} file {path} does not exist; check the path")
    try:
        names = [str(name) for name in pyogrio.list_layers(str(path))[:, 0]]
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, OSError, RuntimeError):
        raise PointsError(f"the {what} file {path} is not a vector file GDAL can read; give a GeoPackage or "
                          "shapefile") from None
    if layer is not None and layer not in names:
        raise PointsError(f"the {what} file {path} has no layer {layer!r}; its layers: {', '.join(names) or 'none'}")
    return pyogrio.read_info(str(path), layer=layer)


def format_table(figures: dict) -> str:
    rows = [("mIoU", f"{figures['miou']:.3f}"), ("mF1", f"{figures['mf1']:.3f}"),
            ("instances", figures["instances"]), ("missed points", figures["missed_points"]),
            ("truth hit by two points", figures["truth_hit_twice"]), ("merges", figures["merges"]),
            ("clicks off the raster (not scored)", figures["clicks_off_raster"])]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


