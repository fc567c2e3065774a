"""Sub-pixel outlines: marching squares on a field of one value per pixel, assembled into polygons.

Pixel ``(r, c)`` has its centre at ``x = c + 0.5, y = r + 0.5`` (x = column, y = row). Which pixels an
outline holds is given apart from the field (``inside``), so an outline holds exactly the centres of its
inside pixels whatever the rounding; the field only places each crossing on the segment between an inside
and an outside centre, where its linear interpolation is zero. Inside pixels that meet only at a corner are
kept apart (4-connected, as ``rasterio.features.shapes(connectivity=4)`` traces a mask): each is cut off on
its own, so the outlines of different objects traced on one grid never overlap.

All objects of a label raster are traced in one pass (:func:`outlines`; :func:`outline` is the case of one):
each edge's crossing is computed once, from the top or left pixel of its pair, so two objects whose fields
are opposite across a shared wall (``f_i = -f_j`` there) get bit-identical wall vertices; each cell takes
one marching-squares case per object among its corners, and each side of an edge is its own segment end,
so neighbours' rings never join. Every object comes out as its own pass over its own pixels would give it.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import numpy as np
import shapely

# a crossing stays this far from either centre, so no two vertices of a ring coincide (a zero or an
# unbounded field value, such as an object's click pixel, would put it on the centre)
_MARGIN = 1e-3


def _case_table() -> np.ndarray:
    """Segments of each marching-squares case: ``(16, 2, 2)`` (from edge, to edge), -1 where there is none.

    Corners are bits TL=1, TR=2, BR=4, BL=8; edges T=0, R=1, B=2, L=3. A segment runs with its inside
    corners on its left (positive cross product in x, y), so outer rings wind with positive shoelace area
    and holes with negative. In a saddle each inside corner is cut off on its own.
    """
    corner_xy = np.array([(0, 0), (1, 0), (1, 1), (0, 1)], dtype=float)
    edge_corners = [(0, 1), (1, 2), (3, 2), (0, 3)]
    mid = corner_xy[list(edge_corners)].mean(axis=1)
    table = -np.ones((16, 2, 2), dtype=int)
    for case in range(16):
        inside = [(case >> k) & 1 for k in range(4)]
        crossing = [e for e, (a, b) in enumerate(edge_corners) if inside[a] != inside[b]]
        if len(crossing) == 4:
            pairs = [tuple(e for e in range(4) if corner in edge_corners[e]) for corner in range(4) if inside[corner]]
        else:
            pairs = [tuple(crossing)] if crossing else []
        for s, (e1, e2) in enumerate(pairs):
            shared = set(edge_corners[e1]) & set(edge_corners[e2])
            ref = shared.pop() if shared else edge_corners[e1][0]
            d, v = mid[e2] - mid[e1], corner_xy[ref] - mid[e1]
            left = d[0] * v[1] - d[1] * v[0] > 0
            table[case, s] = (e1, e2) if left == bool(inside[ref]) else (e2, e1)
    return table


_CASES = _case_table()


def outline(inside: np.ndarray, field: np.ndarray, row0: int = 0, col0: int = 0):
    """The Polygon (or MultiPolygon) around the ``inside`` pixels, its edges where ``field`` crosses zero.

    ``inside``: (H, W) bool; ``field``: (H, W) float, positive on inside pixels and negative or zero on the
    outside pixels next to them (NaN where unknown: the crossing is then half way, on the pixel edge);
    ``row0, col0``: the grid position of ``inside[0, 0]``. Pixels beyond the array count as outside with an
    unknown field. None when no pixel is inside.
    """
    if not inside.any():
        return None
    h, w = inside.shape[0] + 2, inside.shape[1] + 2
    labels = np.zeros((h, w), dtype=np.int8)
    labels[1:-1, 1:-1] = inside
    f = np.full((h, w), np.nan)
    f[1:-1, 1:-1] = field
    flat = f.ravel()
    return outlines(labels, 1, lambda a, b: (flat[a], flat[b]), row0 - 1, col0 - 1)[0]


def outlines(labels: np.ndarray, count: int, ends: Callable[[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]],
             row0: int = 0, col0: int = 0) -> List[Optional[object]]:
    """The outlines of objects ``1..count`` of a label raster, traced in one pass: item ``n - 1`` is object
    ``n``'s Polygon (or MultiPolygon), None where it has no pixel.

    Args:
        labels: (H, W) int; 0 is background, ``1..count`` the objects traced, and labels above ``count``
            objects that are not traced but hold their pixels. No traced object may touch the border.
        count: how many objects to trace.
        ends: ``ends(a, b)`` gives, for edges between a traced object's pixel and another pixel, the field of
            that object (positive inside) at the edge's top or left pixel ``a`` and at its other pixel ``b``
            (flat indices into ``labels``; NaN where unknown). Between two traced objects it may take either's,
            so long as the two are opposite there: the crossing is then the same.
        row0, col0: the grid position of ``labels[0, 0]``.
    """
    h, w = labels.shape
    traced = (labels >= 1) & (labels <= count)
    points, edges = _crossings(labels, traced, ends, row0, col0)
    src, dst, owner = _segments(labels, traced, edges)
    order, starts = _rings(src, dst, 2 * len(edges))
    owners = np.zeros(2 * len(edges), dtype=labels.dtype)
    owners[src] = owner
    ring_owner = owners[order[starts]]
    xy = points[order // 2]
    out: List[Optional[object]] = [None] * count
    per_object = np.bincount(ring_owner, minlength=count + 1)
    lone = per_object[ring_owner] == 1  # nearly every object: one outer ring (a lone ring winds positive)
    bounds = np.append(starts, len(order))
    lengths = np.diff(bounds)
    if lone.any():
        on_lone = np.repeat(lone, lengths)
        rings = shapely.linearrings(xy[on_lone], indices=np.repeat(np.arange(lone.sum()), lengths[lone]))
        for n, polygon in zip(ring_owner[lone].tolist(), shapely.polygons(rings).tolist()):
            out[n - 1] = polygon
    several = np.flatnonzero(~lone)
    for n in np.unique(ring_owner[several]).tolist():
        mine = several[ring_owner[several] == n]
        out[n - 1] = _assemble([xy[bounds[k]:bounds[k + 1]] for k in mine.tolist()])
    return out


def _fraction(f_a: np.ndarray, f_b: np.ndarray) -> np.ndarray:
    """Where a field crosses zero between two centres, as a fraction of the way from ``a``'s (half way where
    it is unknown)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.clip(f_a / (f_a - f_b), _MARGIN, 1 - _MARGIN)
    return np.where(np.isnan(t), 0.5, t)


def _crossings(labels: np.ndarray, traced: np.ndarray, ends, row0: int, col0: int):
    """The x, y of every crossing edge (E, 2), and the edges' indices (sorted): first the ``h x (w-1)`` edges
    between horizontal neighbours, then the ``(h-1) x w`` between vertical ones. An edge crosses where a
    traced object meets another label; its crossing is computed once, from its top or left pixel."""
    h, w = labels.shape
    n_h = h * (w - 1)
    across = (labels[:, :-1] != labels[:, 1:]) & (traced[:, :-1] | traced[:, 1:])
    down = (labels[:-1, :] != labels[1:, :]) & (traced[:-1, :] | traced[1:, :])
    horizontal, vertical = np.flatnonzero(across), np.flatnonzero(down)
    a = np.concatenate([horizontal + horizontal // (w - 1), vertical])  # the top or left pixel
    b = a + np.repeat([1, w], [len(horizontal), len(vertical)])
    t = _fraction(*ends(a, b))
    rows, cols = np.divmod(a, w)
    x = (cols + col0 + 0.5) + np.where(b - a == 1, t, 0.0)
    y = (rows + row0 + 0.5) + np.where(b - a == 1, 0.0, t)
    return np.stack([x, y], axis=-1), np.concatenate([horizontal, n_h + vertical])


def _segments(labels: np.ndarray, traced: np.ndarray, edges: np.ndarray):
    """Every segment of every cell with a traced corner, as (from, to) ids ``2 k + side`` of crossing edge
    ``k`` (``side`` 0 where the object is on the edge's top or left pixel, 1 where it is on the other, so
    neighbours sharing a wall do not share an id), and the object each belongs to: one marching-squares case
    per traced label among a cell's corners. Segments come in the order of their index in the cell's case,
    then of the cells, so each object's rings start where its own pass would start them."""
    h, w = labels.shape
    n_h = h * (w - 1)
    corners = (labels[:-1, :-1], labels[:-1, 1:], labels[1:, 1:], labels[1:, :-1])  # bits TL=1, TR=2, BR=4, BL=8
    mixed = (corners[0] != corners[1]) | (corners[0] != corners[2]) | (corners[0] != corners[3])
    mixed &= traced[:-1, :-1] | traced[:-1, 1:] | traced[1:, 1:] | traced[1:, :-1]
    cells = np.flatnonzero(mixed)
    at = [c.ravel()[cells] for c in corners]
    is_traced = [t.ravel()[cells] for t in (traced[:-1, :-1], traced[:-1, 1:], traced[1:, 1:], traced[1:, :-1])]
    cell, obj, case = [], [], []
    for k in range(4):  # each traced label once per cell, at its first corner
        first = is_traced[k].copy()
        for j in range(k):
            first &= at[j] != at[k]
        c = sum((at[j][first] == at[k][first]) << j for j in range(4))
        cell.append(cells[first])
        obj.append(at[k][first])
        case.append(c)
    sort = np.argsort(np.concatenate(cell), kind="stable")
    cell, obj, case = (np.concatenate(v)[sort] for v in (cell, obj, case))
    rows = cell // (w - 1)
    pixel = cell + rows
    # each cell's T, R, B, L edge, and the bit of that edge's top or left corner
    cell_edges = np.stack([cell, n_h + pixel + 1, cell + w - 1, n_h + pixel], axis=1)
    top_left_bit = np.array([1, 2, 8, 1])
    src, dst, owner = [], [], []
    for s in range(2):
        local = _CASES[case, s]
        has = np.flatnonzero(local[:, 0] >= 0)
        ends = []
        for side in (0, 1):
            e = local[has, side]
            k = np.searchsorted(edges, cell_edges[has, e])
            ends.append(2 * k + ((case[has] & top_left_bit[e]) == 0))
        src.append(ends[0])
        dst.append(ends[1])
        owner.append(obj[has])
    return np.concatenate(src), np.concatenate(dst), np.concatenate(owner)


def _rings(src: np.ndarray, dst: np.ndarray, n_ids: int) -> Tuple[np.ndarray, np.ndarray]:
    """The closed rings of segments (each id starts one segment and ends one): all their ids, ring after
    ring in order along each, and where each ring starts in that list."""
    nxt = np.full(n_ids, -1)
    nxt[src] = dst
    nxt = nxt.tolist()
    done = [False] * n_ids
    order, starts = [], []
    for start in src.tolist():
        if done[start]:
            continue
        starts.append(len(order))
        e = start
        while not done[e]:
            done[e] = True
            order.append(e)
            e = nxt[e]
    return np.array(order, dtype=np.int64), np.array(starts, dtype=np.int64)


def _assemble(rings: List[np.ndarray]) -> Optional[object]:
    """Polygons from rings that neither cross nor touch: positive area winds an outer ring, negative a hole,
    and each hole goes into the smallest outer ring around it."""
    if len(rings) == 1:  # nearly every object: one outer ring (a lone ring winds positive)
        return shapely.Polygon(rings[0])
    areas = np.array([_shoelace(r) for r in rings])
    shells = [rings[k] for k in np.argsort(areas) if areas[k] > 0]  # smallest first
    holes = [r for r, a in zip(rings, areas) if a < 0]
    if len(shells) == 1 and not holes:
        return shapely.Polygon(shells[0])
    shell_polys = [shapely.Polygon(s) for s in shells]
    inner: List[list] = [[] for _ in shells]
    for hole in holes:
        x, y = hole[0]
        owner = next(k for k, p in enumerate(shell_polys) if shapely.contains_xy(p, x, y))
        inner[owner].append(hole)
    polys = [shapely.Polygon(s, h) if h else p for s, h, p in zip(shells, inner, shell_polys)]
    return polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)


def _shoelace(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]) + x[-1] * y[0] - x[0] * y[-1])
