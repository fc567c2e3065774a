"""Masks to clean polygons, and polygons to boxes.

The chip loop and the click path trace each object at sub-pixel precision from its logits
(:func:`trace_logits`, marching squares in :mod:`pointsam_engine.contours`): an edge runs where the logits
cross zero, not along the pixel staircase, and a wall two objects share comes out with the same vertices for
both. :func:`trace` gives the staircase of a binary mask (``rasterio.features.shapes``). Outlines are traced
in working-grid pixel coordinates, simplified there as one coverage (``shapely.coverage_simplify``, which
keeps shared edges shared, so simplification cannot make neighbours overlap, and on the grid gives the same
outlines whatever the georeferencing), and moved to map coordinates with one affine for all objects, so
neighbours keep their shared edges exactly.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import shapely
from affine import Affine
from rasterio.features import shapes
from scipy import ndimage

from .contours import outlines
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
    labels, n = _parts(mask)  # 4-connected, as shapes() traces
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
    return np.take(hit, labels)


def _parts(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    """``mask``'s 4-connected parts labelled 1..n, and n. Labels are numpy's index type, which ``np.bincount``
    and ``np.take`` read without first converting a copy (``ndimage.label``'s default is int32)."""
    return ndimage.label(mask, _FOUR_CONNECTED, output=np.intp)


def _fill_small_holes(mask: np.ndarray, max_hole_px: float) -> np.ndarray:
    """``mask`` with its holes (background 4-connected, as ``binary_fill_holes`` sees them) under
    ``max_hole_px`` pixels filled: one labelling of the background, padded so the outside is one part."""
    padded = np.ones((mask.shape[0] + 2, mask.shape[1] + 2), dtype=bool)  # np.pad costs 5x more per small mask
    padded[1:-1, 1:-1] = ~mask
    background, n = _parts(padded)
    if n <= 1:
        return mask
    sizes = np.bincount(background.ravel(), minlength=n + 1)
    fill = sizes < max_hole_px
    fill[[0, background[0, 0]]] = False  # the mask itself, and the outside
    return mask | np.take(fill, background[1:-1, 1:-1])


def trace(mask: np.ndarray, row0: int, col0: int):
    """Polygon (or MultiPolygon) of a mask in grid pixel coordinates (x = column, y = row); None if empty."""
    if not mask.any():
        return None
    polys = [shapely.geometry.shape(geom) for geom, _ in
             shapes(mask.astype(np.uint8), mask=mask, connectivity=4, transform=Affine.translation(col0, row0))]
    return shapely.union_all(polys)


def trace_logits(objects: Dict[int, Tuple[MaskPatch, np.ndarray]],
                 context: Optional[Dict[int, Tuple[MaskPatch, np.ndarray]]] = None) -> Dict[int, Optional[object]]:
    """Sub-pixel outlines, in grid pixel coordinates, of objects that share no pixel; None for an empty one.

    ``objects``: ``{id: (patch, keep)}``, each object's logits on its grid window (best a pixel beyond its
    mask on every side, so the crossing there is known) and the pixels it keeps (bool, the patch's shape).
    Each outline holds exactly its kept pixels' centres (4-connected, as :func:`trace`): against the
    background its edge is where the object's own logits cross zero; between two objects, where the
    segment between their pixel centres is split in the ratio of their logits, computed once for both, so
    the shared wall has identical vertices and the outlines never overlap.

    ``context``: settled neighbours traced in a later call, in the same form. Their pixels count as theirs
    here, and their patches take minus the traced objects' logits on the traced pixels (in place), so
    when their turn comes, against what is then background, they draw the same walls.
    """
    out: Dict[int, Optional[object]] = {i: None for i in objects}
    if not objects:
        return out
    ids, near = list(objects), [k for k in (context or {}) if k not in objects]
    traced, others = _Pixels([objects[i] for i in ids]), _Pixels([context[k] for k in near])
    r0, c0 = int(traced.row0.min()) - 1, int(traced.col0.min()) - 1
    r1 = int((traced.row0 + traced.height).max()) + 1
    c1 = int((traced.col0 + traced.width).max()) + 1
    labels = np.zeros((r1 - r0, c1 - c0), dtype=np.int32)
    strength = np.zeros(labels.shape, dtype=np.float64)  # the owner's logit on each kept pixel
    for n0, pixels in ((1, traced), (1 + len(ids), others)):
        which, at = pixels.on_raster(r0, c0, labels.shape)
        labels.flat[at] = n0 + pixels.patch_of[which]
        # a kept pixel the model left out (a filled hole) counts as just inside: a context patch then takes
        # no positive value from it
        strength.flat[at] = np.maximum(pixels.logits[which], 0)
    if near:
        _give_context(others, labels, strength, len(ids), r0, c0)

    def ends(a: np.ndarray, b: np.ndarray):
        """Either pixel's field: the object's own logits (at most 0) on the background, its strength on its
        pixels, minus a neighbour's strength on the neighbour's."""
        la, lb = labels.flat[a], labels.flat[b]
        owner = np.where((la >= 1) & (la <= len(ids)), la, lb)
        fields = []
        for p, lp in ((a, la), (b, lb)):
            v = strength.flat[p]
            f = np.where(lp == owner, v, -v)
            bg = np.flatnonzero(lp == 0)
            f[bg] = traced.outside_logits(owner[bg] - 1, p[bg], r0, c0, labels.shape[1])
            fields.append(f)
        return fields

    for i, geom in zip(ids, outlines(labels, len(ids), ends, r0, c0)):
        out[i] = geom
    return out


def _give_context(others: "_Pixels", labels: np.ndarray, strength: np.ndarray, count: int, r0: int, c0: int):
    """Minus the traced objects' strength into the context patches' logits on the traced pixels (in place)."""
    for patch in others.patches:
        grid, local = _overlap(patch, r0, c0, labels.shape)
        traced = (labels[grid] >= 1) & (labels[grid] <= count)
        if traced.any():
            if not patch.logits.flags.writeable:
                patch.logits = patch.logits.copy()
            patch.logits[local][traced] = -strength[grid][traced]


def _overlap(patch: MaskPatch, row0: int, col0: int, shape) -> Tuple[tuple, tuple]:
    """Slices of the part a patch shares with a raster at ``row0, col0`` of ``shape``: in the raster, in the
    patch (empty slices where they do not meet)."""
    top, left = max(patch.row0, row0), max(patch.col0, col0)
    bottom = max(min(patch.row0 + patch.shape[0], row0 + shape[0]), top)
    right = max(min(patch.col0 + patch.shape[1], col0 + shape[1]), left)
    return ((slice(top - row0, bottom - row0), slice(left - col0, right - col0)),
            (slice(top - patch.row0, bottom - patch.row0), slice(left - patch.col0, right - patch.col0)))


class _Pixels:
    """The kept pixels of many patches as flat lists (patch after patch, each row by row), with where each
    lies on the grid, so a call handles all objects at once. Only kept pixels are listed: patches may overlap
    widely (their windows), and listing every window pixel would cost memory by their sum, not the grid's."""

    def __init__(self, items):
        self.patches = [patch for patch, _ in items]
        self.row0 = np.array([p.row0 for p in self.patches], dtype=np.int64)
        self.col0 = np.array([p.col0 for p in self.patches], dtype=np.int64)
        self.height = np.array([p.shape[0] for p in self.patches], dtype=np.int64)
        self.width = np.array([p.shape[1] for p in self.patches], dtype=np.int64)
        local = [np.flatnonzero(keep) for _, keep in items]
        self.patch_of = np.repeat(np.arange(len(local)), [len(i) for i in local])
        self.local = np.concatenate(local or [np.zeros(0, dtype=np.int64)])
        self.logits = np.concatenate([p.logits.ravel()[i] for p, i in zip(self.patches, local)] or [np.zeros(0)])

    def on_raster(self, r0: int, c0: int, shape) -> Tuple[np.ndarray, np.ndarray]:
        """The kept pixels that lie on a raster at ``r0, c0`` of ``shape``: their places in the lists, and
        their flat indices in the raster."""
        k = self.patch_of
        rows, cols = np.divmod(self.local, self.width[k])
        rows += self.row0[k] - r0
        cols += self.col0[k] - c0
        on = np.flatnonzero((rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1]))
        return on, rows[on] * shape[1] + cols[on]

    def outside_logits(self, k: np.ndarray, at: np.ndarray, r0: int, c0: int, width: int) -> np.ndarray:
        """Patch ``k``'s logits, at most 0, at flat raster indices ``at`` (NaN beyond the patch)."""
        rows, cols = np.divmod(at, width)
        rows += r0 - self.row0[k]
        cols += c0 - self.col0[k]
        inside = np.flatnonzero((rows >= 0) & (rows < self.height[k]) & (cols >= 0) & (cols < self.width[k]))
        out = np.full(len(at), np.nan)
        order = inside[np.argsort(k[inside], kind="stable")]
        for group in np.split(order, np.flatnonzero(np.diff(k[order])) + 1) if len(order) else []:
            patch = self.patches[k[group[0]]]
            out[group] = np.minimum(patch.logits[rows[group], cols[group]], 0)
        return out


def to_map(geoms: Sequence, transform: Affine) -> np.ndarray:
    """Apply a grid's affine to pixel-coordinate geometries (vectorized).

    A sliver whose vertices lie closer than the map coordinates resolve (an overlay of two sub-pixel
    outlines can leave one) collapses there: such polygons come back repaired (:func:`polygonal`).
    """
    out = shapely.transform(np.asarray(geoms, dtype=object),
                            lambda xy: np.column_stack(apply_affine(transform, xy[:, 0], xy[:, 1])))
    broken = np.flatnonzero(np.isin(shapely.get_type_id(out), (3, 6)) & ~shapely.is_valid(out))
    out[broken] = [polygonal(out[k]) for k in broken]
    return out


def simplify_coverage(geoms: np.ndarray, tolerance: float) -> np.ndarray:
    """Simplify non-overlapping polygons together so shared edges stay shared; always valid polygons."""
    if len(geoms) == 0:
        return geoms
    out = shapely.coverage_simplify(geoms, tolerance) if tolerance > 0 else geoms
    return polygonal_each(out)


def simplify_each(geoms: np.ndarray, tolerance: float) -> np.ndarray:
    """Simplify polygons one by one (for objects allowed to overlap), as :func:`simplify_coverage` simplifies
    them together; always valid polygons."""
    out = np.array(geoms, dtype=object).reshape(-1)
    if tolerance > 0:
        live = np.flatnonzero(~shapely.is_missing(out))
        out[live] = [shapely.coverage_simplify(out[k:k + 1], tolerance)[0] for k in live]
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


def without_slivers(geom, min_area: float = 1.0):
    """``geom`` less its parts under ``min_area`` (grid pixels²): the slivers an overlay of two sub-pixel
    outlines leaves where their edges nearly meet. None when nothing is left."""
    if geom is None:
        return None
    parts = shapely.get_parts(geom)
    parts = parts[shapely.area(parts) >= min_area]
    return None if len(parts) == 0 else parts[0] if len(parts) == 1 else shapely.MultiPolygon(list(parts))


def with_vertices(geom, points: np.ndarray, tolerance: float):
    """``geom`` (Polygon or MultiPolygon) with each of ``points`` (N, 2) that lies within ``tolerance`` of one of
    its edges made a vertex there: put into the edge, or in place of the edge's end when that is as near.
    Points that are already vertices, or near no edge, change nothing.

    What ``shapely.snap`` does for a handful of points, in O((n + N) log n) rather than O(n N): outlines of tens of
    thousands of vertices take thousands of points this way.
    """
    parts = shapely.get_parts(geom)
    rings = [[shapely.get_coordinates(r) for r in (p.exterior, *p.interiors)] for p in parts]
    flat = [r for part in rings for r in part]
    coords = np.concatenate(flat)
    x0, y0, x1, y1 = shapely.bounds(geom) + np.array([-1, -1, 1, 1]) * tolerance
    points = points[(points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)]
    xy = np.setdiff1d(points @ [1, 1j], coords @ [1, 1j])  # unique, and not yet vertices
    points = np.column_stack([xy.real, xy.imag])
    # edge k runs from coords[k] to coords[k + 1]; the last vertex of each ring (its first again) starts none
    last = np.cumsum([len(r) for r in flat]) - 1
    starts = np.setdiff1d(np.arange(len(coords) - 1), last[:-1])
    edges = shapely.linestrings(np.stack([coords[starts], coords[starts + 1]], axis=1))
    hit, edge = shapely.STRtree(edges).query(shapely.points(points), predicate="dwithin", distance=tolerance)
    hit, first = np.unique(hit, return_index=True)  # one edge per point
    vertex, ring_of = starts[edge[first]], np.searchsorted(last, starts[edge[first]])
    offsets = np.concatenate([[0], last[:-1] + 1])
    for k in np.unique(ring_of):
        mine = ring_of == k
        flat[k] = _ring_with_vertices(flat[k], points[hit[mine]], vertex[mine] - offsets[k], tolerance)
    polys, n = [], 0
    for part in rings:
        polys.append(shapely.Polygon(flat[n], flat[n + 1:n + len(part)]))
        n += len(part)
    return polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)


def _ring_with_vertices(ring: np.ndarray, new: np.ndarray, edge: np.ndarray, tolerance: float) -> np.ndarray:
    """``ring`` with the ``new`` points on its edges ``edge`` (ring-local)."""
    ring = ring.copy()
    at_start = np.hypot(*(new - ring[edge]).T) <= tolerance
    at_end = ~at_start & (np.hypot(*(new - ring[edge + 1]).T) <= tolerance)
    vertex = np.where(at_start, edge, edge + 1)[at_start | at_end]
    ring[np.where(vertex == len(ring) - 1, 0, vertex)] = new[at_start | at_end]  # the closing vertex is the first
    ring[-1] = ring[0]
    inner = ~at_start & ~at_end
    new, edge = new[inner], edge[inner]
    along = np.einsum("ij,ij->i", new - ring[edge], ring[edge + 1] - ring[edge])
    order = np.lexsort((along, edge))
    return np.insert(ring, edge[order] + 1, new[order], axis=0)


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
