"""Sub-pixel outlines: marching squares on a field of one value per pixel, assembled into polygons.

Pixel ``(r, c)`` has its centre at ``x = c + 0.5, y = r + 0.5`` (x = column, y = row). Which pixels an
outline holds is given apart from the field (``inside``), so an outline holds exactly the centres of its
inside pixels whatever the rounding; the field only places each crossing on the segment between an inside
and an outside centre, where its linear interpolation is zero. Inside pixels that meet only at a corner are
kept apart (4-connected, as ``rasterio.features.shapes(connectivity=4)`` traces a mask): each is cut off on
its own, so the outlines of different objects traced on one grid never overlap.

A crossing is computed from the top or left pixel of its pair whichever object is traced, so two objects
whose fields are opposite across a shared wall (``f_i = -f_j`` there) get bit-identical wall vertices.
"""

from __future__ import annotations

from typing import List, Optional

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
    ins = np.zeros((h, w), dtype=bool)
    ins[1:-1, 1:-1] = inside
    f = np.full((h, w), np.nan)
    f[1:-1, 1:-1] = field
    points = _crossings(ins, f, row0 - 1, col0 - 1)
    src, dst = _segments(ins)
    return _assemble([points[ring] for ring in _rings(src, dst, len(points))])


def _crossings(ins: np.ndarray, f: np.ndarray, row0: int, col0: int) -> np.ndarray:
    """(E, 2) x, y of every edge's crossing (NaN where the edge does not cross): first the ``h x (w-1)``
    edges between horizontal neighbours, then the ``(h-1) x w`` edges between vertical ones."""
    h, w = ins.shape
    out = []
    for a, b, f_a, f_b, axis in ((ins[:, :-1], ins[:, 1:], f[:, :-1], f[:, 1:], 0),
                                 (ins[:-1, :], ins[1:, :], f[:-1, :], f[1:, :], 1)):
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.clip(f_a / (f_a - f_b), _MARGIN, 1 - _MARGIN)  # always from the top or left centre
        t = np.where(np.isnan(t), 0.5, t)
        rows, cols = np.indices(a.shape)
        x = (cols + col0 + 0.5) + (t if axis == 0 else 0.0)
        y = (rows + row0 + 0.5) + (t if axis == 1 else 0.0)
        xy = np.stack([x, y], axis=-1)
        xy[a == b] = np.nan
        out.append(xy.reshape(-1, 2))
    return np.concatenate(out)


def _segments(ins: np.ndarray):
    """Every segment of every cell as (from edge, to edge) indices into :func:`_crossings`' edges."""
    h, w = ins.shape
    case = (ins[:-1, :-1] * 1 + ins[:-1, 1:] * 2 + ins[1:, 1:] * 4 + ins[1:, :-1] * 8).ravel()
    rows, cols = np.divmod(np.arange(case.size), w - 1)
    n_h = h * (w - 1)
    # the global index of each cell's T, R, B, L edge
    edges = np.stack([rows * (w - 1) + cols, n_h + rows * w + cols + 1, (rows + 1) * (w - 1) + cols,
                      n_h + rows * w + cols], axis=1)
    src, dst = [], []
    for s in range(2):
        local = _CASES[case, s]
        has = local[:, 0] >= 0
        cells = np.flatnonzero(has)
        src.append(edges[cells, local[has, 0]])
        dst.append(edges[cells, local[has, 1]])
    return np.concatenate(src), np.concatenate(dst)


def _rings(src: np.ndarray, dst: np.ndarray, n_edges: int) -> List[np.ndarray]:
    """The closed rings of segments (each edge starts one segment and ends one), as edge indices in order."""
    following = np.full(n_edges, -1)
    following[src] = dst
    todo = np.zeros(n_edges, dtype=bool)
    todo[src] = True
    nxt = following.tolist()
    rings = []
    for start in src.tolist():
        if not todo[start]:
            continue
        ring, e = [start], nxt[start]
        while e != start:
            ring.append(e)
            e = nxt[e]
        todo[ring] = False
        rings.append(np.array(ring))
    return rings


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
