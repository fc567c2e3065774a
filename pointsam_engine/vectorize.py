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

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def clean_mask(patch: MaskPatch, keep_points: np.ndarray, max_hole_px: float) -> np.ndarray:
    """The patch's mask with holes below ``max_hole_px`` filled and only the parts holding a click.

    ``keep_points``: (N, 2) x, y on the patch's grid. When no part holds a click (the mask missed
    it), the largest part is kept.
    """
    mask = patch.mask
    if max_hole_px > 0:
        mask = _fill_small_holes(mask, max_hole_px)
    labels, n = ndimage.label(mask, _FOUR_CONNECTED)  # as shapes() traces
    if n <= 1:
        return mask
    rows = np.floor(keep_points[:, 1]).astype(int) - patch.row0
    cols = np.floor(keep_points[:, 0]).astype(int) - patch.col0
    inside = (rows >= 0) & (rows < mask.shape[0]) & (cols >= 0) & (cols < mask.shape[1])
    hit = np.zeros(n + 1, dtype=bool)
    hit[labels[rows[inside], cols[inside]]] = True
    hit[0] = False
    if not hit.any():
        hit[1 + int(np.argmax(np.bincount(labels.ravel(), minlength=n + 1)[1:]))] = True
    return hit[labels]


def _fill_small_holes(mask: np.ndarray, max_hole_px: float) -> np.ndarray:
    """``mask`` with its holes (background 4-connected, as ``binary_fill_holes`` sees them) under
    ``max_hole_px`` pixels filled: one labelling of the background, padded so the outside is one part."""
    padded = np.ones((mask.shape[0] + 2, mask.shape[1] + 2), dtype=bool)  # np.pad costs 5x more per small mask
    padded[1:-1, 1:-1] = ~mask
    background, n = ndimage.label(padded, _FOUR_CONNECTED)
    if n <= 1:
        return mask
    sizes = np.bincount(background.ravel(), minlength=n + 1)
    fill = sizes < max_hole_px
    fill[[0, background[0, 0]]] = False  # the mask itself, and the outside
    return mask | fill[background[1:-1, 1:-1]]


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
    return polygonal_each(out)


def simplify_each(geoms: np.ndarray, tolerance: float) -> np.ndarray:
    """Simplify polygons one by one (for objects allowed to overlap); always valid polygons."""
    out = shapely.simplify(np.asarray(geoms, dtype=object), tolerance) if tolerance > 0 else geoms
    return polygonal_each(out)


def polygonal_each(geoms) -> np.ndarray:
    """:func:`polygonal` of each geometry; the valid polygons, nearly all of them, pass through untouched."""
    out = np.array(geoms, dtype=object).reshape(-1)
    fix = ~(shapely.is_valid(out) & np.isin(shapely.get_type_id(out), (3, 6)))
    out[fix] = [polygonal(g) for g in out[fix]] if fix.any() else []
    return out


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
    left, right = left[left < right], right[left < right]
    inner = shapely.relate_pattern(geoms[left], geoms[right], "T********")  # interiors meet: cheaper than overlay
    left, right = left[inner], right[inner]
    shared = shapely.area(shapely.intersection(geoms[left], geoms[right]))
    meets = shared > 1e-9 * np.maximum(shapely.area(geoms[left]), shapely.area(geoms[right]))
    return [(int(i), int(j)) for i, j in zip(left[meets], right[meets])]


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
    geoms = np.asarray(geoms, dtype=object)
    boxes = shapely.oriented_envelope(geoms)
    flat = shapely.get_type_id(boxes) != 3  # a line or a point for a degenerate object: its envelope instead
    boxes[flat] = [polygonal(b) or g.envelope for b, g in zip(boxes[flat], geoms[flat])]
    for k in np.flatnonzero(~shapely.covers(boxes, geoms) & ~shapely.is_missing(geoms)):
        boxes[k] = _grown_to_cover(boxes[k], geoms[k])
    return boxes


def _grown_to_cover(box, geom):
    """``box`` pushed out, square corners kept, by the few nanometres GEOS's rotated rectangle can leave a
    vertex of ``geom`` outside it, so the box always holds its object."""
    coords = shapely.get_coordinates(geom)
    gap = float(shapely.distance(shapely.points(coords), box).max())
    # GEOS returns an empty polygon for a buffer below the coordinates' rounding (1e-10 m at 2.5e6 m): start a
    # few ulps out, and go further until the box covers its object
    step = max(gap * 1.5, 16 * float(np.spacing(np.abs(coords).max())))
    grown = box.buffer(step, join_style="mitre")
    while grown.is_empty or not grown.covers(geom):
        step *= 2
        grown = box.buffer(step, join_style="mitre")
    return grown


def axis_boxes(geoms: np.ndarray) -> np.ndarray:
    """Axis-aligned bounding boxes."""
    return shapely.envelope(np.asarray(geoms, dtype=object))


def hold_clicks(geoms: np.ndarray, masks: np.ndarray, clicks: Sequence[np.ndarray], pixels: Sequence[np.ndarray],
                settle: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Each outline made to hold the clicks its mask held, and whether the mask held all of its clicks.

    Simplifying, regularizing or settling an edge can leave a click just outside its object's outline;
    the click's pixel (``pixels``: one square per click, map coordinates) is then added back to the object
    and, with ``settle``, taken from any neighbour it now overlaps. ``masks`` are the traced masks, ``clicks``
    each object's positive clicks ((N, 2) x, y), all in the same map coordinates as ``geoms``.
    Returns ``(outlines, holds_click)``.
    """
    geoms = np.array(geoms, dtype=object).reshape(-1)
    masks = np.asarray(masks, dtype=object).reshape(-1)
    if not len(geoms):
        return geoms, np.zeros(0, dtype=bool)
    owner = np.repeat(np.arange(len(geoms)), [len(c) for c in clicks])
    points = shapely.points(np.vstack(clicks))
    squares = np.concatenate(pixels)
    held = shapely.covers(masks[owner], points)
    lost = np.flatnonzero(held & ~shapely.contains(geoms[owner], points) & ~shapely.is_missing(geoms[owner]))
    tree = shapely.STRtree(geoms) if len(lost) and settle else None
    grown: set = set()  # outlines that took a pixel since the tree was built
    for k in lost:
        obj, square = owner[k], squares[k]
        near = set(tree.query(square)) | grown if tree is not None else set()
        near = [j for j in near - {obj} if geoms[j] is not None and shapely.intersects(geoms[j], square)]
        if any(_holds_pixel(squares[owner == j], square) for j in near):
            continue  # two objects clicked in one pixel: it stays with the one whose outline has it
        for j in near:
            rest = polygonal(geoms[j].difference(square))
            geoms[j] = None if rest is None or rest.is_empty else rest
        geoms[obj] = polygonal(shapely.union(geoms[obj], square))
        grown.add(obj)
    holds = np.bincount(owner[held], minlength=len(geoms)) == np.bincount(owner, minlength=len(geoms))
    return geoms, holds


def _holds_pixel(squares: np.ndarray, square) -> bool:
    """Whether one of an object's click pixels (``squares``) is the pixel ``square``."""
    return bool(shapely.equals(squares, square).any()) if len(squares) else False
