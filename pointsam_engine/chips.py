"""Plan prompt-centred chips: few encoder passes, and every object taken where it is most central.

All coordinates are working-grid pixels (see :mod:`pointsam_engine.raster`): ``row`` down,
``col`` right, pixel centres at ``i + 0.5``. A chip is a ``size x size`` window. A point is *well
inside* a chip when it keeps ``margin`` pixels from every chip edge that is not also a raster edge
(an object cannot extend past the raster, so those edges cut nothing).

The planner is a greedy cover: take the top-most uncovered point, put it on the top edge of a
chip's inner region, slide the chip sideways to cover the most uncovered points, repeat. Each
object is then assigned to the chip where it is most central, and its mask is taken from there.
No I/O, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np


@dataclass(frozen=True)
class Chip:
    """A square window of the working grid. ``row0, col0``: top-left pixel; ``size``: side in pixels."""

    index: int
    row0: int
    col0: int
    size: int


@dataclass
class ChipPlan:
    chips: List[Chip]
    owner: np.ndarray  # (N,) chip index each point's object is taken from
    assigned: List[np.ndarray]  # per chip: point indexes it predicts
    context: List[np.ndarray]  # per chip: other points inside it (neighbours for calibration)

    @property
    def encoder_passes(self) -> int:
        return len(self.chips)


def centrality(rows: np.ndarray, cols: np.ndarray, chip: Chip, grid_shape: Tuple[int, int]) -> np.ndarray:
    """Distance in pixels from each point to the nearest chip edge that is not a raster edge.

    Negative when the point is outside the chip; ``inf`` when every edge is a raster edge.
    """
    n_rows, n_cols = grid_shape
    r1, c1 = chip.row0 + chip.size, chip.col0 + chip.size
    inside = (rows >= chip.row0) & (rows < r1) & (cols >= chip.col0) & (cols < c1)
    dist = np.full(len(rows), np.inf)
    if chip.row0 > 0:
        dist = np.minimum(dist, rows - chip.row0)
    if chip.col0 > 0:
        dist = np.minimum(dist, cols - chip.col0)
    if r1 < n_rows:
        dist = np.minimum(dist, r1 - rows)
    if c1 < n_cols:
        dist = np.minimum(dist, c1 - cols)
    return np.where(inside, dist, -1.0)


def _clamp(start: np.ndarray, size: int, extent: int) -> np.ndarray:
    return np.clip(start, 0, max(extent - size, 0)).astype(int)


def plan_chips(rows: np.ndarray, cols: np.ndarray, grid_shape: Tuple[int, int], size: int,
               margin: float) -> ChipPlan:
    """Greedy chip cover of points ``(rows, cols)`` on a grid of ``grid_shape`` (working pixels).

    Every point ends up at least ``margin`` pixels from the non-raster edges of its chip.
    ``margin`` is at most ``size / 2``.
    """
    rows, cols = np.asarray(rows, float), np.asarray(cols, float)
    margin = float(min(margin, size / 2))
    n_rows, n_cols = grid_shape
    covered = np.zeros(len(rows), dtype=bool)
    chips: List[Chip] = []
    order = np.lexsort((cols, rows))
    sorted_rows = rows[order]
    inner = size - 2 * margin
    for p in order:
        if covered[p]:
            continue
        # every point a chip for p can hold or weigh lies less than one chip size above or below p
        local = order[np.searchsorted(sorted_rows, rows[p] - size):np.searchsorted(sorted_rows, rows[p] + size, "right")]
        row0 = int(_clamp(np.array([np.floor(rows[p] - margin)]), size, n_rows)[0])
        # candidate left edges: p on the left of the inner region, in its centre, on its right,
        # or an uncovered neighbour in the same band on the left of the inner region
        free = local[~covered[local]]
        band = free[(rows[free] >= rows[p]) & (rows[free] < rows[p] + inner) & (np.abs(cols[free] - cols[p]) <= inner)]
        starts = np.concatenate([[cols[p] - margin, cols[p] - size / 2, cols[p] - size + margin],
                                 cols[band] - margin])
        starts = np.unique(_clamp(np.floor(starts), size, n_cols))
        near = free[(np.abs(rows[free] - rows[p]) < size) & (np.abs(cols[free] - cols[p]) < 2 * size)]
        col0 = _best_start(rows[near], cols[near], near == p, row0, starts, size, margin, grid_shape)
        if col0 is None:  # cannot happen with margin <= size/2; keep the planner total anyway
            col0 = int(_clamp(np.array([cols[p] - size / 2]), size, n_cols)[0])
        best = Chip(len(chips), row0, col0, size)
        chips.append(best)
        covered[local] |= centrality(rows[local], cols[local], best, grid_shape) >= margin
    return _assign(rows, cols, chips, grid_shape)


def _central_along(coords: np.ndarray, start: np.ndarray, size: int, margin: float, extent: int) -> np.ndarray:
    """Whether each coordinate lies in ``[start, start + size)`` at least ``margin`` from each end that is not
    a raster edge; ``start`` may be a column of several starts (one row of the result each)."""
    end = start + size
    ok = (coords >= start) & (coords < end)
    ok &= (start == 0) | (coords - start >= margin)
    ok &= (end >= extent) | (end - coords >= margin)
    return ok


def _best_start(rows: np.ndarray, cols: np.ndarray, is_p: np.ndarray, row0: int, starts: np.ndarray, size: int,
                margin: float, grid_shape: Tuple[int, int]) -> Optional[int]:
    """The first of ``starts`` (left edges of chips at ``row0``) holding the most points at least ``margin``
    inside (``centrality() >= margin``) among those that hold the point ``is_p``; ``None`` if none holds it."""
    n_rows, n_cols = grid_shape
    in_rows = _central_along(rows, np.array(row0), size, margin, n_rows)
    cols, is_p = cols[in_rows], is_p[in_rows]
    if not is_p.any():
        return None
    counts = np.empty(len(starts), dtype=np.int64)
    for lo in range(0, len(starts), 64):  # 64 candidate chips at a time bounds the memory of dense layers
        ok = _central_along(cols[None, :], starts[lo:lo + 64, None], size, margin, n_cols)
        counts[lo:lo + 64] = np.where(ok[:, is_p].all(axis=1), ok.sum(axis=1), -1)
    return int(starts[np.argmax(counts)]) if counts.max() >= 0 else None


def plan_per_point(rows: np.ndarray, cols: np.ndarray, grid_shape: Tuple[int, int], size: int) -> ChipPlan:
    """The naive plan: one chip centred on each point (the baseline in ``benchmarks/``)."""
    n_rows, n_cols = grid_shape
    chips = [Chip(i, int(_clamp(np.array([r - size / 2]), size, n_rows)[0]),
                  int(_clamp(np.array([c - size / 2]), size, n_cols)[0]), size)
             for i, (r, c) in enumerate(zip(rows, cols))]
    plan = _assign(np.asarray(rows, float), np.asarray(cols, float), chips, grid_shape)
    plan.owner = np.arange(len(chips))
    plan.assigned = [np.array([i]) for i in range(len(chips))]
    plan.context = [np.setdiff1d(np.flatnonzero(centrality(rows, cols, chip, grid_shape) > 0), [chip.index])
                    for chip in chips]
    return plan


def _assign(rows, cols, chips: List[Chip], grid_shape) -> ChipPlan:
    """Each point's owner (the chip where it is most central, the first on ties; chip 0 for a point in
    none) and each chip's context (other points inside it). Each chip looks only at its own rows."""
    rows, cols = np.asarray(rows, float), np.asarray(cols, float)
    owner, best = np.zeros(len(rows), dtype=int), np.full(len(rows), -1.0)
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    inside = []
    for k, chip in enumerate(chips):
        local = order[np.searchsorted(sorted_rows, chip.row0):np.searchsorted(sorted_rows, chip.row0 + chip.size)]
        score = centrality(rows[local], cols[local], chip, grid_shape)
        better = score > best[local]
        best[local[better]], owner[local[better]] = score[better], k
        inside.append(local[score > 0])
    assigned = [np.flatnonzero(owner == k) for k in range(len(chips))]
    context = [np.sort(points[owner[points] != k]) for k, points in enumerate(inside)]
    return ChipPlan(chips, owner, assigned, context)


def _meeting(chips: List[Chip]) -> np.ndarray:
    """(N, N) bool: whether the windows of two chips share pixels (a chip meets itself)."""
    box = np.array([[c.row0, c.col0, c.row0 + c.size, c.col0 + c.size] for c in chips]).reshape(len(chips), 4)
    return ((box[:, None, 0] < box[None, :, 2]) & (box[None, :, 0] < box[:, None, 2])
            & (box[:, None, 1] < box[None, :, 3]) & (box[None, :, 1] < box[:, None, 3]))


def finalization_schedule(chips: List[Chip]) -> List[List[int]]:
    """For each chip in processing order, the chips that can be settled once it is done.

    A chip is settled when every chip whose window meets its window has been processed: after that no
    later mask can claim its pixels, so its objects can be traced and their rasters dropped. With the
    planner's top-to-bottom order, only about one row of chips is ever held in memory.
    """
    schedule: List[List[int]] = [[] for _ in chips]
    for j, meets in enumerate(_meeting(chips)):
        schedule[int(np.flatnonzero(meets).max())].append(j)
    return schedule


def neighbours(chips: List[Chip]) -> List[np.ndarray]:
    """For each chip, the other chips whose windows meet its window."""
    meets = _meeting(chips)
    np.fill_diagonal(meets, False)
    return [np.flatnonzero(row) for row in meets]
