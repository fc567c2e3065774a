"""Training material from a region's point layers: chips around the clicks, read the way the engine reads them.

For each ``(raster, points)`` pair, the engine's own stages do the work: :class:`Raster` and its stretch,
``read_points`` + ``locate_on_raster`` + ``group_instances`` for the clicks, and ``plan_chips`` for the chip
cover, so a model adapts to chips exactly like those it will segment. No mask is read anywhere.

Before chips are planned, the objects are split into training and validation by spatial blocks
(:func:`block_split`), so validation measures the adapter on ground it never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from pointsam_engine.chips import Chip, plan_chips
from pointsam_engine.config import SegmentConfig
from pointsam_engine.errors import PointsError
from pointsam_engine.points import Instance, group_instances, locate_on_raster, read_points
from pointsam_engine.raster import Normalization, Raster, apply_affine, compute_normalization


@dataclass
class TrainingChip:
    """One chip's image and its objects' clicks in chip pixels (x, y; pixel centres at i + 0.5)."""

    region: int
    chip: Chip
    image: np.ndarray  # (S, S, 3) uint8, zero beyond the raster
    positives: List[np.ndarray]  # per object in the chip: (n, 2)
    negatives: List[np.ndarray]  # per object: the user's negative clicks, (m, 2)
    owned: np.ndarray  # objects (indexes into positives) trained from this chip: those most central here
    truth: Optional[List[np.ndarray]] = None  # per object (S, S) bool, only for mask-supervised training


@dataclass
class Region:
    """One raster with its clicks, split into training and validation objects."""

    raster: str
    points: str
    crs: object  # the raster's CRS: clicks are held in it
    norm: Normalization
    instances: List[Instance]
    val: np.ndarray  # bool per instance
    chips: List[TrainingChip] = field(default_factory=list)


def block_split(xy: np.ndarray, block: float, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Validation flags for points ``xy`` (N, 2): whole square blocks of side ``block`` go to validation,
    in random order, until about ``fraction`` of the points are there (never all of them)."""
    if fraction <= 0 or len(xy) < 2:
        return np.zeros(len(xy), dtype=bool)
    keys = np.floor(np.asarray(xy) / block).astype(np.int64)
    blocks, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    chosen, total = [], 0
    for b in rng.permutation(len(blocks)):
        if total >= fraction * len(xy) or total + counts[b] >= len(xy):
            continue
        chosen.append(b)
        total += counts[b]
    return np.isin(inverse, chosen)


def load_region(index: int, raster: str, points: str, cfg: SegmentConfig, chip_size: int, *,
                val_fraction: float, rng: np.random.Generator, truth: Optional[str] = None) -> Region:
    """Read one region's clicks, split them, and read the chips covering its training objects.

    ``truth``: reference polygons, read only for the mask-supervised upper bound of benchmarks: each
    object's mask is the polygon holding its first click."""
    with Raster(raster, bands=cfg.bands, nodata=cfg.nodata, assume_crs=cfg.assume_crs, chip_scale=cfg.chip_scale) as ras:
        norm = compute_normalization(ras, cfg.stretch, cfg.sar_db)
        table = read_points(points, ras.crs, layer=cfg.layer, instance_field=cfg.instance_field,
                            label_field=cfg.label_field)
        keep, _ = locate_on_raster(table, ras, points, raster)
        instances, _ = group_instances(table.subset(keep))
        if not instances:
            raise PointsError(f"no positive click of {points} lies on data in {raster}; "
                              "training needs clicks (label 1) inside the raster")
        pos = [ras.to_working(inst.pos) for inst in instances]
        neg = [ras.to_working(inst.neg) for inst in instances]
        anchors = np.array([p.mean(axis=0) for p in pos])
        val = block_split(anchors, _block_side(anchors, chip_size), val_fraction, rng)
        region = Region(str(raster), str(points), ras.crs, norm, instances, val)
        region.chips = _read_chips(index, ras, norm, pos, neg, anchors, ~val, chip_size, cfg.chip_margin)
        if truth:
            _attach_truth(region, ras, truth, chip_size)
    return region


def _attach_truth(region: Region, ras: Raster, truth: str, size: int) -> None:
    import pyogrio
    import shapely
    from rasterio.features import rasterize
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    polygons = pyogrio.read_dataframe(truth).to_crs(ras.crs).geometry.values
    tree = shapely.STRtree(polygons)
    for chip in region.chips:
        transform = window_transform(Window(chip.chip.col0, chip.chip.row0, size, size), ras.working_transform)
        masks = []
        for clicks in chip.positives:
            x, y = apply_affine(transform, clicks[:1, 0], clicks[:1, 1])
            hits = tree.query(shapely.Point(float(x[0]), float(y[0])), predicate="within")
            mask = np.zeros((size, size), bool)
            if len(hits):
                mask = rasterize([(polygons[hits[0]], 1)], out_shape=(size, size), transform=transform).astype(bool)
            masks.append(mask)
        chip.truth = masks


def _block_side(anchors: np.ndarray, chip_size: int) -> float:
    """Validation blocks of one chip, or smaller where the clicks span too few chips for a split."""
    extent = float(np.ptp(anchors, axis=0).max()) if len(anchors) > 1 else 0.0
    return max(1.0, min(float(chip_size), extent / 3))


def _read_chips(index, ras, norm, pos, neg, anchors, train, size, margin) -> List[TrainingChip]:
    ids = np.flatnonzero(train)
    if len(ids) == 0:
        return []
    plan = plan_chips(anchors[ids, 1], anchors[ids, 0], ras.working_shape, size, margin * size)
    chips = []
    for chip, assigned, context in zip(plan.chips, plan.assigned, plan.context):
        members = np.concatenate([assigned, context]).astype(int)
        image = np.zeros((size, size, 3), np.uint8)
        part, _ = ras.read_chip(chip.row0, chip.col0, size, norm)
        image[:part.shape[0], :part.shape[1]] = part
        shift = np.array([chip.col0, chip.row0], float)
        chips.append(TrainingChip(index, chip, image, [pos[ids[m]] - shift for m in members],
                                  [neg[ids[m]] - shift for m in members], np.arange(len(assigned))))
    return chips


def background_negatives(positives: Sequence[np.ndarray], size: int, count: int, min_distance: float,
                         rng: np.random.Generator, exclude: np.ndarray | None = None) -> np.ndarray:
    """``count`` random chip pixels at least ``min_distance`` from every positive click and outside
    ``exclude`` (an (S, S) bool map, e.g. the teacher's masks); fewer when the chip has no room."""
    clicks = np.vstack([p for p in positives if len(p)]) if any(len(p) for p in positives) else np.zeros((0, 2))
    found: List[Tuple[float, float]] = []
    for _ in range(20):
        xy = rng.uniform(0, size, (4 * count, 2))
        ok = np.ones(len(xy), dtype=bool)
        if len(clicks):
            ok &= np.min(np.linalg.norm(xy[:, None] - clicks[None], axis=-1), axis=1) >= min_distance
        if exclude is not None:
            ok &= ~exclude[xy[:, 1].astype(int).clip(0, size - 1), xy[:, 0].astype(int).clip(0, size - 1)]
        found.extend(map(tuple, xy[ok]))
        if len(found) >= count:
            break
    return np.array(found[:count], float).reshape(-1, 2)
