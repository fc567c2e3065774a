"""Masks to clean polygons, and polygons to boxes.

Masks are traced with ``rasterio.features.shapes`` in working-grid pixel coordinates and moved to
map coordinates with one affine for all objects, so neighbours share their edges exactly; the
polygons are then simplified as one coverage (``shapely.coverage_simplify``), which keeps shared
edges shared, so simplification cannot make neighbours overlap.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import shapely
from affine import Affine
from rasterio.features import shapes
from scipy import ndimage

from .masks import MaskPatch
from .raster import apply_affine


def clean_mask(patch: MaskPatch, keep_points: np.ndarray, max_hole_px: float) -> np.ndarray:
    """The patch's mask with holes below ``max_hole_px`` filled and only the parts holding a click.

    ``keep_points``: (N, 2) x, y on the patch's grid. When no part holds a click (the mask missed
    it), the largest part is kept.
    """
    mask = patch.mask
    if max_hole_px > 0:
        holes = ndimage.binary_fill_holes(mask) & ~mask
        labels, n = ndimage.label(holes)
        if n:
            sizes = ndimage.sum_labels(holes, labels, index=np.arange(1, n + 1))
            mask = mask | np.isin(labels, 1 + np.flatnonzero(sizes < max_hole_px))
    labels, n = ndimage.label(mask)  # 4-connectivity, as shapes() traces
    if n <= 1:
        return mask
    rows = np.floor(keep_points[:, 1]).astype(int) - patch.row0
    cols = np.floor(keep_points[:, 0]).astype(int) - patch.col0
    inside = (rows >= 0) & (rows < mask.shape[0]) & (cols >= 0) & (cols < mask.shape[1])
    hit = set(labels[rows[inside], cols[inside]].tolist()) - {0}
    if not hit:
        hit = {1 + int(np.argmax(ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))))}
    return np.isin(labels, sorted(hit))


def trace(mask: np.ndarray, row0: int, col0: int):
    """Polygon (or MultiPolygon) of a mask in grid pixel coordinates (x = column, y = row); None if empty."""
    if not mask.any():
        return None
    polys = [shapely.geometry.shape(geom) for geom, _ in
             shapes(mask.astype(np.uint8), mask=mask, connectivity=4, transform=Affine.translation(col0, row0))]
    return shapely.union_all(polys)


def trace_many(masks: Dict[int, Tuple[int, int, np.ndarray]]) -> Dict[int, Optional[object]]:
    """:func:`trace` of several masks that share no pixel (``{id: (row0, col0, mask)}``), in one pass: painted
    into one label raster and traced by one ``shapes`` call, so thousands of objects cost one GDAL call,
    not one each. The polygons are those :func:`trace` gives each mask alone."""
    out: Dict[int, Optional[object]] = {i: None for i in masks}
    if not masks:
        return out
    r0 = min(r for r, _, _ in masks.values())
    c0 = min(c for _, c, _ in masks.values())
    r1 = max(r + m.shape[0] for r, _, m in masks.values())
    c1 = max(c + m.shape[1] for _, c, m in masks.values())
    labels = np.zeros((r1 - r0, c1 - c0), dtype=np.int32)
    ids = list(masks)
    for n, i in enumerate(ids, 1):
        r, c, m = masks[i]
        labels[r - r0:r - r0 + m.shape[0], c - c0:c - c0 + m.shape[1]][m] = n
    parts: Dict[int, list] = {}
    for geom, value in shapes(labels, mask=labels > 0, connectivity=4, transform=Affine.translation(c0, r0)):
        parts.setdefault(int(value), []).append(shapely.geometry.shape(geom))
    for n, polys in parts.items():
        out[ids[n - 1]] = shapely.union_all(polys)
    return out


def to_map(geoms: Sequence, transform: Affine) -> np.ndarray:
    """Apply a grid's affine to pixel-coordinate geometries (vectorized)."""
    return shapely.transform(np.asarray(geoms, dtype=object),
                             lambda xy: np.column_stack(apply_affine(transform, xy[:, 0], xy[:, 1])))


def simplify_coverage(geoms: np.ndarray, tolerance: float) -> np.ndarray:
    """Simplify non-overlapping polygons together so shared edges stay shared; always valid polygons."""
    if len(geoms) == 0:
        return geoms
    out = shapely.coverage_simplify(geoms, tolerance) if tolerance > 0 else geoms
    return np.array([polygonal(g) for g in out], dtype=object)


def simplify_each(geoms: np.ndarray, tolerance: float) -> np.ndarray:
    """Simplify polygons one by one (for objects allowed to overlap); always valid polygons."""
    out = shapely.simplify(np.asarray(geoms, dtype=object), tolerance) if tolerance > 0 else geoms
    return np.array([polygonal(g) for g in out], dtype=object)


def polygonal(geom):
    """A valid Polygon/MultiPolygon from any geometry (make_valid, drop lines and points)."""
    if geom is None:
        return None
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else None


def overlapping(geoms: np.ndarray) -> list:
    """Index pairs ``(i, j)``, ``i < j``, of polygons that share area (touching edges do not count)."""
    geoms = np.asarray(geoms, dtype=object)
    if len(geoms) < 2:
        return []
    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    return [(int(i), int(j)) for i, j in zip(left, right)
            if i < j and geoms[i].intersection(geoms[j]).area > 1e-9 * max(geoms[i].area, geoms[j].area)]


def remove_overlaps(geoms: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Safety net after simplification: where two polygons still overlap, the lower score gives way."""
    geoms = np.array(geoms, dtype=object)
    for i, j in overlapping(geoms):
        if geoms[i] is not None and geoms[j] is not None:
            loser, winner = (i, j) if scores[i] < scores[j] else (j, i)
            geoms[loser] = polygonal(geoms[loser].difference(geoms[winner]))
    return geoms


def oriented_boxes(geoms: np.ndarray) -> np.ndarray:
    """Minimum-area rotated rectangles."""
    return np.array([polygonal(shapely.oriented_envelope(g)) or g.envelope for g in geoms], dtype=object)


def axis_boxes(geoms: np.ndarray) -> np.ndarray:
    """Axis-aligned bounding boxes."""
    return shapely.envelope(np.asarray(geoms, dtype=object))
