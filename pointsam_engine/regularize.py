"""Outlines an analyst keeps: regularized building footprints and smoothed ship hulls.

``buildings``: right angles where they fit, notches narrower than two pixels closed, jogs flattened, holes below
the hole threshold filled. Each footprint is fitted along the direction its walls run in the imagery
(:mod:`pointsam_engine.walls`): a leaky or blobby mask's own outline can run tens of degrees off the walls,
the roof's edges in the image do not. Without the image (or where it shows no one direction) the mask gives the
directions: the one whose best-fitting rectangle fits its outline best and the dominant direction of its edges.
A neighbour's direction within 10° is tried too. Along a direction, the simplest of its best rectangle and its
right-angled outline with jogs flattened at several widths that fits the outline well (IoU less a cost per
vertex) is kept, a neighbour's direction preferred where it fits about as well. A simple roof is 4 vertices.
The outline simplified at a few tolerances competes too, its corners, not right angles, costing more than a
right-angled outline's: a footprint whose walls meet at other angles (a trapezoid the mask follows
closely) keeps its shape rather than being squared into a rectangle that fits it worse, and neighbours do not
take a direction from it. Each edge lies where it fits the outline's area best, so the regularized outlines are
neither grown nor shrunk on average, and a footprint the raster's edge cuts off ends at that edge.
``buildingregulariser`` (the library samgeo and TerraLab use) was used first and is not any more: it took its
direction from the staircase, tilting rectangles by a few degrees, kept pixel jogs (12-16 vertices where
the OSM footprints have 4) and lowered mIoU against them by 0.013-0.020 (``benchmarks/bench_outlines.py``).

``ships``: the staircase smoothed to the hull (corner cutting), kept inside the mask's oriented box, so the
``boxes`` layer is the one the mask gives.

Regularization moves edges, so neighbours can come to overlap. Where two outlines overlap, the overlap
goes whole to the object whose mask held more of it: the pixels were already given to the higher logit
when the masks were settled, so this is the same rule; an overlap neither mask held goes to the higher
score. The loser's edge then runs along the winner's straight edge, so the shared wall stays straight and
shared. Each outline's IoU with its mask is returned so analysts can filter the ones moved most.

Geometry is worked in a metric, conformal frame (a transverse Mercator centred on the data when the CRS
is geographic), where a right angle on the ground is a right angle in coordinates.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np
import shapely
from pyproj import CRS, Transformer
from scipy import ndimage
from shapely import affinity

from .measure import Measurer
from .vectorize import oriented_boxes, overlapping, polygonal, polygonal_each, trace

MODES = ("none", "buildings", "ships")
NOTCH_PX = 1.0  # notches and spikes up to two pixels wide are removed (a morphological closing and opening)
JOG_PX = 3.0  # walls closer than three pixels are always put on one line
JOG_SHARES = (0.05, 0.1, 0.15, 0.2, 0.3)  # and wider jogs tried, as shares of the footprint's size (sqrt of area)
VERTEX_COST = 0.024  # the IoU with its outline a footprint's vertex must buy (bench_outlines.py --tune chose it) ...
FREE_COST = 0.016  # ... and a vertex of the simplified outline, whose corners are not right angles, this on top
FREE_SHARES = (0.03, 0.05, 0.08)  # the outline simplified by these shares of the footprint's size competes too
# (FREE_COST and FREE_SHARES were first tried on bench_outlines.py's table chips, then checked with --tune)
NEIGHBOUR_PX = 10.0  # footprints closer than ten pixels are neighbours; ...
NEIGHBOUR_DEG = 10.0  # ... those whose directions differ by less than 10° take one direction ...
ALIGN_LOSS = 0.02  # ... where the smaller one's fit loses at most this by it
SAME_DEG = 1.0  # an edge direction this close to the rectangle's is not fitted again
GRID_CELLS = 80  # an outline is resampled on half-pixel cells, or this many across where that is coarser
MIN_SAMPLES = 16  # footprints with fewer half-pixel cells are kept as they are
WALL_PX = 2.0  # neighbours that shared a wall in their masks and lie closer than this share it again


def regularize(geoms: np.ndarray, masks: np.ndarray, scores: np.ndarray, mode: str, crs, pixel_m: float,
               min_hole_m2: float = 0.0, settle: bool = True, extent=None,
               walls: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Regularized outlines of ``geoms`` and each one's IoU with its mask.

    Args:
        geoms: the vectorized outlines (polygons in ``crs``; neighbours do not overlap); ``ships`` smooths them.
        masks: each object's traced mask (the same objects, polygons in ``crs``); ``buildings`` fits them, the
            model's sub-pixel edge rather than its simplified outline.
        scores: each object's score; breaks ties when an overlap lies outside both masks.
        mode: ``none``, ``buildings`` or ``ships``.
        crs: the CRS of the geometries.
        pixel_m: the raster's pixel size on the ground (metres).
        min_hole_m2: holes smaller than this (m²) are filled.
        settle: give overlaps to one object (off when the run keeps overlaps).
        extent: the raster's footprint (a polygon in ``crs``); regularized outlines are cut at it, so a footprint
            the image cuts off ends where the image does instead of going on past its edge (``none`` cuts
            nothing: its outlines are the mask's, on the raster's grid).
        walls: per object, a short segment (in ``crs``) along the direction its walls run in the imagery
            (:func:`pointsam_engine.walls.wall_directions`), or None; ``buildings`` fits along it.
    Returns:
        ``(outlines, iou_to_mask)``; with ``none`` the outlines are ``geoms``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown regularize mode {mode!r}; use one of {', '.join(MODES)}")
    geoms = np.asarray(geoms, dtype=object)
    masks = np.asarray(masks, dtype=object)
    if mode == "none" or len(geoms) == 0:
        return geoms, iou(geoms, masks)
    to_frame, from_frame, metres = _metric_frame(crs, geoms)
    local, local_masks = to_frame(geoms), to_frame(masks)
    px = pixel_m / metres
    if mode == "buildings":
        out = regularize_buildings(local_masks, px, min_hole_m2 / metres ** 2, _wall_directions(walls, to_frame))
    else:
        out = smooth_hulls(local, px)
    if extent is not None:
        out = clip_to(out, to_frame([shapely.segmentize(extent, _edge_step(extent))])[0], 0.01 * px)
    if settle:
        out = settle_overlaps(out, local_masks, scores)
    if settle and mode == "buildings":
        out = settle_overlaps(share_walls(out, local_masks, scores, WALL_PX * px), local_masks, scores)
    # the way back from the metric frame can fold a spike a fraction of a pixel wide: repaired
    return polygonal_each(from_frame(out)), iou(out, local_masks)


def regularize_buildings(geoms: np.ndarray, pixel: float, min_hole_area: float = 0.0,
                         directions: Optional[Sequence[Optional[float]]] = None) -> np.ndarray:
    """Right-angled footprints where they fit (metric, conformal coordinates; ``pixel`` in them).

    Each footprint is fitted along its walls' direction in ``directions`` (degrees, modulo 90, or None), or where
    there is none along its best rectangle's direction and its edges' dominant direction (:func:`_own_fit`),
    then along a larger neighbour's where :func:`_align_neighbours` says so. Along a direction the outline is
    resampled on a grid, notches are closed, and of the rectangle and the grid outline with its jogs flattened
    at several widths the one with the best IoU with the outline, less
    :data:`VERTEX_COST` per vertex, is that direction's fit (:func:`_outline`). The outline simplified
    (:func:`_simplified_fit`, :data:`FREE_COST` more per vertex) is kept where it fits better than all of them.
    """
    out = np.array(geoms, dtype=object)
    samples = {i: _samples(g, pixel) for i, g in enumerate(geoms) if g is not None and not g.is_empty}
    samples = {i: s for i, s in samples.items() if len(s[0]) >= MIN_SAMPLES}
    directions = [None] * len(geoms) if directions is None else directions
    fitted = {i: _own_fit(geoms[i], *s, pixel, directions[i]) for i, s in samples.items()}
    cells = {i: s[1] for i, s in samples.items()}
    for i, fit in _align_neighbours(geoms, cells, fitted, pixel).items():
        shape = polygonal(fit.shape)
        if shape is not None:
            out[i] = _fill_holes(shape, min_hole_area)
    return out


class _Fit(NamedTuple):
    """A footprint's outline and how well it fits: right-angled along ``direction`` (degrees, mod 90), or, with
    ``square`` false, its simplified outline (``direction`` is then its best right-angled fit's)."""

    shape: object
    fit: float
    direction: float
    square: bool = True


def _own_fit(geom, points: np.ndarray, cell: float, pixel: float, wall_direction: Optional[float] = None) -> _Fit:
    """The best fit of ``geom`` along ``wall_direction`` (degrees: its walls' in the image), or without it along
    the directions its mask gives (:func:`_mask_directions`), or its outline simplified (:func:`_simplified_fit`)
    where that fits better: walls that do not meet at right angles."""
    directions = [wall_direction] if wall_direction is not None else _mask_directions(geom, points, cell, pixel)
    right_angled = max((_Fit(*_outline(geom, d, cell, pixel), d) for d in directions), key=lambda f: f.fit)
    return max(right_angled, _simplified_fit(geom, pixel, right_angled.direction), key=lambda f: f.fit)  # ties: right


def _mask_directions(geom, points: np.ndarray, cell: float, pixel: float) -> list:
    """Its best rectangle's direction and its edges' dominant direction (a leaky mask's best rectangle can lie
    tens of degrees off the walls its edges follow)."""
    directions = [_dominant_angle(points, cell)]
    edges = _edge_direction(geom, pixel)
    if edges is not None and abs(turn(edges, directions[0])) > SAME_DEG:
        directions.append(edges)
    return directions


def _simplified_fit(geom, pixel: float, direction: float) -> _Fit:
    """``geom`` simplified by each of :data:`FREE_SHARES` of its size (at least a pixel), the one with the best
    IoU with ``geom`` less :data:`VERTEX_COST` + :data:`FREE_COST` per vertex (a footprint whose walls meet at
    other angles than right ones, as the mask shows them); ``direction`` is its best right-angled fit's."""
    size = np.sqrt(geom.area)
    candidates = [polygonal(shapely.simplify(geom, max(pixel, share * size))) for share in FREE_SHARES]
    candidates = np.array([c for c in candidates if c is not None], dtype=object)
    if not len(candidates):
        return _Fit(None, -np.inf, direction, False)
    fits = (iou(candidates, np.full(len(candidates), geom, dtype=object))
            - (VERTEX_COST + FREE_COST) * vertex_counts(candidates))
    best = int(np.argmax(fits))
    return _Fit(candidates[best], float(fits[best]), direction, False)


def turn(direction: float | np.ndarray, other: float | np.ndarray) -> float | np.ndarray:
    """The turn from ``other`` to ``direction`` (degrees, both modulo 90; numbers or arrays), in [-45, 45)."""
    return (direction - other + 45) % 90 - 45


def step_directions(steps: np.ndarray) -> np.ndarray:
    """The direction (degrees, modulo 90) of each step (Nx2: dx, dy)."""
    return np.degrees(np.arctan2(steps[:, 1], steps[:, 0])) % 90


def _wall_directions(walls, to_frame) -> Optional[list]:
    """The direction (degrees, modulo 90) of each wall segment in the metric frame (None where it has none)."""
    if walls is None:
        return None
    walls = to_frame(walls)
    live = [k for k, w in enumerate(walls) if w is not None]
    ends = np.array([np.asarray(walls[k].coords)[:2] for k in live]).reshape(-1, 2, 2)
    out = [None] * len(walls)
    for k, direction in zip(live, step_directions(ends[:, 1] - ends[:, 0])):
        out[k] = float(direction)
    return out


def _samples(geom, pixel: float) -> Tuple[np.ndarray, float]:
    """Points (Nx2) inside ``geom`` on a grid of half a pixel (coarser for footprints over
    :data:`GRID_CELLS` cells across, so the cost per footprint is bounded), and the grid's cell."""
    x0, y0, x1, y1 = geom.bounds
    cell = max(0.5 * pixel, max(x1 - x0, y1 - y0) / GRID_CELLS)
    xs, ys = np.meshgrid(np.arange(x0 + cell / 2, x1, cell), np.arange(y0 + cell / 2, y1, cell))
    inside = shapely.contains_xy(geom, xs, ys)
    return np.column_stack([xs[inside], ys[inside]]), cell


def _occupancy(points: np.ndarray, angle: float, cell: float) -> np.ndarray:
    """How much of each cell of a grid turned by ``angle`` (degrees) the sampled points fill (rows: y)."""
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    q = (points - points.mean(0)) @ np.array([[c, -s], [s, c]])  # coordinates in the turned frame
    lo = q.min(0) - cell
    n = np.ceil((q.max(0) + cell - lo) / cell).astype(int)
    hist, _, _ = np.histogram2d(q[:, 1], q[:, 0], bins=(n[1], n[0]),
                                range=((lo[1], lo[1] + n[1] * cell), (lo[0], lo[0] + n[0] * cell)))
    return np.minimum(hist, 1.0)


def _best_rectangle(fill: np.ndarray, rounds: int = 4) -> Tuple[Tuple[int, int, int, int], float]:
    """The axis-aligned rectangle of cells ``(row0, row1, col0, col1)`` with the best IoU with ``fill``, and that IoU.

    Widening a rectangle by a strip raises its IoU exactly when the strip is filled by more than IoU / (1 + IoU),
    so each round puts the columns, then the rows, at that share of the current rectangle's span.
    """
    total = fill.sum()
    r0, r1, c0, c1 = 0, fill.shape[0], 0, fill.shape[1]
    for _ in range(rounds + 1):
        inter = fill[r0:r1, c0:c1].sum()
        iou_now = inter / (total + (r1 - r0) * (c1 - c0) - inter)
        share = iou_now / (1 + iou_now)
        cols = np.flatnonzero(fill[r0:r1].mean(0) > share)
        c0, c1 = (cols[0], cols[-1] + 1) if len(cols) else (c0, c1)
        rows = np.flatnonzero(fill[:, c0:c1].mean(1) > share)
        r0, r1 = (rows[0], rows[-1] + 1) if len(rows) else (r0, r1)
    return (r0, r1, c0, c1), iou_now


def _dominant_angle(points: np.ndarray, cell: float) -> float:
    """The direction (degrees, mod 90) whose best rectangle fits the points best, searched every 3° then every
    0.5° on cells twice the sampling's (a bounded, cheap estimate)."""
    def fit(angle):
        return _best_rectangle(_occupancy(points, angle, 2 * cell), rounds=2)[1]

    coarse = np.arange(0.0, 90.0, 3.0)
    best = coarse[int(np.argmax([fit(a) for a in coarse]))]
    fine = best + np.arange(-2.5, 2.6, 0.5)
    return float(fine[int(np.argmax([fit(a) for a in fine]))] % 90)


def _edge_direction(geom, pixel: float):
    """The direction (degrees, mod 90) most of the outline's length runs along, once its pixel steps are
    simplified away: a length-weighted histogram of its edges' directions, smoothed over 3°, every 0.5°
    (None where simplifying leaves no edge)."""
    rings = [np.asarray(r.coords).reshape(-1, 2) for r in _rings(shapely.simplify(geom, 0.7 * pixel))]
    steps = np.vstack([np.zeros((0, 2))] + [np.diff(xy, axis=0) for xy in rings])
    if not len(steps):
        return None
    lengths = np.hypot(steps[:, 0], steps[:, 1])
    directions = step_directions(steps)
    grid = np.arange(0.0, 90.0, 0.5)
    off = turn(grid[:, None], directions[None])
    return float(grid[int(np.argmax((lengths * np.exp(-0.5 * (off / 3.0) ** 2)).sum(1)))])


def _align_neighbours(geoms, cells: dict, fitted: dict, pixel: float) -> dict:
    """Footprints closer than :data:`NEIGHBOUR_PX` pixels whose directions differ by less than
    :data:`NEIGHBOUR_DEG` take one direction: the larger one's, where the smaller one's outline along it fits
    within :data:`ALIGN_LOSS` of its own best fit (``cells``: each footprint's sampling cell). A footprint kept
    as its simplified outline (walls that are not square) neither gives nor takes a direction."""
    live = np.array(sorted(fitted), dtype=int)
    if len(live) < 2:
        return fitted
    left, right = shapely.STRtree(geoms[live]).query(geoms[live], predicate="dwithin", distance=NEIGHBOUR_PX * pixel)
    fitted, own, tried = dict(fitted), {i: f.fit for i, f in fitted.items()}, {}
    for a, b in sorted({(min(i, j), max(i, j)) for i, j in zip(live[left], live[right]) if i != j},
                       key=lambda p: -max(geoms[p[0]].area, geoms[p[1]].area)):
        big, small = (a, b) if geoms[a].area >= geoms[b].area else (b, a)
        if not (fitted[big].square and fitted[small].square):  # walls that are not square neither lead nor follow
            continue
        direction = fitted[big].direction
        if 0 < abs(turn(direction, fitted[small].direction)) < NEIGHBOUR_DEG:
            if (small, direction) not in tried:  # several neighbours can offer one direction
                tried[small, direction] = _outline(geoms[small], direction, cells[small], pixel)
            shape, fit = tried[small, direction]
            if fit >= own[small] - ALIGN_LOSS:
                fitted[small] = _Fit(shape, fit, direction)
    return fitted


def _outline(geom, angle: float, cell: float, pixel: float) -> Tuple[object, float]:
    """The right-angled outline of ``geom`` along ``angle`` and its fit: its best rectangle or its grid outline
    with jogs flattened, whichever has the best IoU with ``geom`` less :data:`VERTEX_COST` per vertex."""
    origin = tuple(np.asarray(geom.centroid.coords[0]))
    flat = affinity.rotate(geom, -angle, origin=origin)
    x0, y0, x1, y1 = flat.bounds
    x0, y0 = x0 - cell, y0 - cell
    xs, ys = np.meshgrid(np.arange(x0 + cell / 2, x1 + cell, cell), np.arange(y0 + cell / 2, y1 + cell, cell))
    inside = shapely.contains_xy(flat, xs, ys)
    (r0, r1, c0, c1), _ = _best_rectangle(inside.astype(float))
    candidates = [shapely.box(x0 + c0 * cell, y0 + r0 * cell, x0 + c1 * cell, y0 + r1 * cell)]
    traced = trace(_without_notches_grid(inside, int(round(2 * NOTCH_PX * pixel / cell)) + 1), 0, 0)
    if traced is not None:
        traced = affinity.affine_transform(traced, [cell, 0, 0, cell, x0, y0])
        size = np.sqrt(geom.area)
        for share in JOG_SHARES:
            parts = [_without_jogs(p, max(JOG_PX * pixel, share * size)) for p in shapely.get_parts(traced)]
            if all(p is not None for p in parts):
                candidates.append(polygonal(shapely.union_all(parts)))
    candidates = np.array([c for c in candidates if c is not None], dtype=object)
    fits = iou(candidates, np.full(len(candidates), flat, dtype=object)) - VERTEX_COST * vertex_counts(candidates)
    best = int(np.argmax(fits))
    return affinity.rotate(candidates[best], angle, origin=origin), float(fits[best])


def _without_notches_grid(inside: np.ndarray, width: int) -> np.ndarray:
    """``inside`` closed then opened with a ``width``-cell square: notches and spikes narrower than it go."""
    square = np.ones((width, width), dtype=bool)
    padded = np.pad(inside, width)
    return ndimage.binary_opening(ndimage.binary_closing(padded, square), square)[width:-width, width:-width]


def _without_jogs(polygon, width: float):
    """An axis-aligned polygon with walls less than ``width`` apart (jogs, shallow steps) moved onto one line,
    or None where that folds it (less than half its area left).

    The positions of the walls along each axis are grouped (a group wider than ``width`` is split at its
    largest gap) and each group takes its length-weighted mean, so a staircase of small offsets becomes one
    straight wall.
    """
    rings = [_snap_ring(np.asarray(r.coords), width) for r in (polygon.exterior, *polygon.interiors)]
    shape = polygonal(shapely.Polygon(rings[0]))
    for ring in rings[1:]:
        hole = polygonal(shapely.Polygon(ring))
        shape = polygonal(shape.difference(hole)) if shape is not None and hole is not None else shape
    if shape is None or shape.area < 0.5 * polygon.area:
        return None
    return shapely.simplify(shapely.remove_repeated_points(shape, 1e-9 * width), 1e-6 * width)


def _snap_ring(closed: np.ndarray, width: float) -> np.ndarray:
    xy = closed[:-1].copy()
    n = len(xy)
    d = np.roll(xy, -1, axis=0) - xy  # edge k runs from vertex k to vertex k + 1 (mod n)
    for axis in (0, 1):  # axis 0: vertical walls (their x); axis 1: horizontal walls (their y)
        where = np.flatnonzero(np.abs(d[:, 1 - axis]) >= np.abs(d[:, axis]))
        if not len(where):
            continue
        pos = 0.5 * (xy[where, axis] + xy[(where + 1) % n, axis])
        length = np.abs(d[where, 1 - axis]) + 1e-12
        order = np.argsort(pos)
        group = _groups(pos[order], width)
        mean = np.bincount(group, pos[order] * length[order]) / np.bincount(group, length[order])
        new = np.empty_like(pos)
        new[order] = mean[group]
        xy[where, axis] = new
        xy[(where + 1) % n, axis] = new
    return np.vstack([xy, xy[:1]])


def _groups(ordered: np.ndarray, width: float) -> np.ndarray:
    """Group labels of sorted positions: one group, split at its largest gap while wider than ``width``."""
    cuts, spans = [], [(0, len(ordered))]
    while spans:
        a, b = spans.pop()
        if b - a > 1 and ordered[b - 1] - ordered[a] > width:
            k = a + 1 + int(np.argmax(np.diff(ordered[a:b])))
            cuts.append(k)
            spans += [(a, k), (k, b)]
    group = np.zeros(len(ordered), dtype=int)
    for k in cuts:
        group[k:] += 1
    return group


def smooth_hulls(geoms: np.ndarray, pixel: float, rounds: int = 3) -> np.ndarray:
    """Each outline's staircase smoothed by corner cutting (Chaikin), inside the outline's oriented box."""
    out = []
    for geom in geoms:
        if geom is None:
            out.append(None)
            continue
        box = oriented_boxes(np.array([geom], dtype=object))[0]
        parts = [_chaikin(shapely.simplify(p, 0.5 * pixel), rounds) for p in shapely.get_parts(geom)]
        parts = [shapely.simplify(p, 0.2 * pixel) for p in parts if p is not None]  # within a fifth of a pixel of the curve
        smooth = polygonal(shapely.union_all(parts))
        out.append(polygonal(smooth.intersection(box)) if smooth is not None else geom)
    return np.array(out, dtype=object)


def clip_to(geoms: np.ndarray, extent, tolerance: float) -> np.ndarray:
    """Each outline cut at ``extent`` (those inside it unchanged; None where nothing is left), then simplified
    within ``tolerance``, which drops the vertices a segmentized extent leaves along the cut."""
    out = np.array(geoms, dtype=object)
    for i, geom in enumerate(out):
        if geom is not None and not extent.contains(geom):
            cut = polygonal(geom.intersection(extent))
            cut = polygonal(shapely.simplify(cut, tolerance)) if cut is not None and not cut.is_empty else None
            out[i] = cut if cut is not None and not cut.is_empty else None
    return out


def _edge_step(extent) -> float:
    """Vertices this far apart along the extent's edges keep them straight in the metric frame (1/256 of its size)."""
    x0, y0, x1, y1 = extent.bounds
    return max(x1 - x0, y1 - y0) / 256


def settle_overlaps(geoms: np.ndarray, masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Where two outlines overlap, the overlap goes to the one whose mask held more of it (then the higher score)."""
    geoms = np.array(geoms, dtype=object)
    for i, j in overlapping(geoms):
        if geoms[i] is None or geoms[j] is None:
            continue
        shared = geoms[i].intersection(geoms[j])
        held_i, held_j = (shared.intersection(masks[k]).area if masks[k] is not None else 0.0 for k in (i, j))
        i_wins = held_i > held_j or (held_i == held_j and scores[i] >= scores[j])
        loser, winner = (j, i) if i_wins else (i, j)
        geoms[loser] = polygonal(geoms[loser].difference(geoms[winner]))
    return geoms


def share_walls(geoms: np.ndarray, masks: np.ndarray, scores: np.ndarray, width: float) -> np.ndarray:
    """Neighbours whose masks shared a wall get one wall again: the lower-scored outline's vertices within
    ``width`` of the other's outline are snapped onto it (overlaps this makes are settled after)."""
    geoms = np.array(geoms, dtype=object)
    live = np.flatnonzero([g is not None and m is not None for g, m in zip(geoms, masks)])
    if len(live) < 2:
        return geoms
    left, right = shapely.STRtree(masks[live]).query(masks[live], predicate="touches")
    for a, b in zip(live[left], live[right]):
        if a < b and geoms[a].distance(geoms[b]) < width:
            loser, winner = (a, b) if scores[a] < scores[b] else (b, a)
            geoms[loser] = polygonal(shapely.snap(geoms[loser], geoms[winner], width)) or geoms[loser]
    return geoms


def iou(geoms: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """IoU of each outline with its mask (0 where either is missing)."""
    geoms, masks = np.asarray(geoms, dtype=object), np.asarray(masks, dtype=object)
    if len(geoms) == 0:
        return np.zeros(0)
    inter = np.nan_to_num(shapely.area(shapely.intersection(geoms, masks)))
    union = np.nan_to_num(shapely.area(geoms)) + np.nan_to_num(shapely.area(masks)) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def right_angle_share(geoms, tolerance_deg: float = 10.0) -> float:
    """Share of the corners of all rings within ``tolerance_deg`` of 90° (straight-through vertices skipped)."""
    right = total = 0
    for geom in geoms:
        for ring in _rings(geom):
            xy = np.asarray(ring.coords)[:-1]
            if len(xy) < 3:
                continue
            a, b = np.roll(xy, 1, axis=0) - xy, np.roll(xy, -1, axis=0) - xy
            cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
            angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
            corner = angle < 175.0
            right += int((np.abs(angle[corner] - 90) <= tolerance_deg).sum())
            total += int(corner.sum())
    return right / total if total else float("nan")


def vertex_counts(geoms) -> np.ndarray:
    """Distinct vertices per geometry (each ring's closing vertex not counted)."""
    return np.array([sum(len(r.coords) - 1 for r in _rings(g)) for g in geoms])


def _rings(geom):
    if geom is None:
        return []
    return [ring for p in shapely.get_parts(geom) for ring in (p.exterior, *p.interiors)]


def _fill_holes(geom, min_area: float):
    if min_area <= 0:
        return geom
    parts = [shapely.Polygon(p.exterior, [r for r in p.interiors if shapely.Polygon(r).area >= min_area])
             for p in shapely.get_parts(geom)]
    return polygonal(shapely.union_all(parts))


def _chaikin(polygon, rounds: int):
    """Chaikin corner cutting of each ring (stays inside the ring's convex hull), or None if degenerate."""
    if polygon is None or polygon.is_empty:
        return None
    rings = [_chaikin_ring(np.asarray(r.coords)[:-1], rounds) for r in (polygon.exterior, *polygon.interiors)]
    if len(rings[0]) < 4:
        return polygon
    return polygonal(shapely.Polygon(rings[0], [r for r in rings[1:] if len(r) >= 4]))


def _chaikin_ring(xy: np.ndarray, rounds: int) -> np.ndarray:
    for _ in range(rounds):
        nxt = np.roll(xy, -1, axis=0)
        xy = np.column_stack([0.75 * xy + 0.25 * nxt, 0.25 * xy + 0.75 * nxt]).reshape(-1, 2)
    return np.vstack([xy, xy[:1]])


def _metric_frame(crs, geoms: np.ndarray):
    """``(to_frame, from_frame, metres)``: transforms of geometry arrays into a conformal frame and back, and the
    ground metres one frame unit spans. A projected CRS is kept (its units may be feet, or stretched as Web
    Mercator's are); a geographic one goes to a transverse Mercator in metres centred on the data."""
    crs = CRS.from_user_input(crs) if crs is not None else None
    live = [g for g in geoms if g is not None]
    x, y = shapely.centroid(shapely.union_all(live)).coords[0] if live else (0.0, 0.0)
    if crs is None or not crs.is_geographic:
        def same(g):
            return np.asarray(g, dtype=object)

        return same, same, Measurer(crs).metres_per_unit(x, y, 1.0) if crs is not None else 1.0
    local = CRS.from_proj4(f"+proj=tmerc +lat_0={y} +lon_0={x} +k=1 +x_0=0 +y_0=0 +ellps=WGS84 +units=m")

    def move(source, target):
        transformer = Transformer.from_crs(source, target, always_xy=True)
        return lambda g: shapely.transform(np.asarray(g, dtype=object),
                                           lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))

    return move(crs, local), move(local, crs), 1.0
