"""Objects larger than a chip: decoded again on a coarser grid.

A mask that runs into an inner edge of its chip (an edge that is not the raster's) was stopped by the chip,
not by the object's outline: a warehouse, a stadium, a tanker in a 1024-pixel chip at 0.3 m. After the
chip loop such objects go through the chip loop again on a grid :data:`COARSER` times coarser, with chips
planned over those objects only (they share encoder passes), each object's prompt as before and every other
object's clicks on the coarse chip as calibration neighbours. A coarse mask is kept when it does not run into
its own chip's inner edge, or when the model scores it higher than the fine one; kept coarse masks share
pixels by the chip loop's rule (the higher logit), and each coarse outline then gives way to the
neighbours that keep their (finer) outline, so no two objects overlap.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import shapely
from shapely.affinity import scale

from .chip_loop import ChipRun, segment_chips
from .chips import ChipPlan, plan_chips
from .points import Instance
from .raster import Normalization, Raster, to_working_each
from .vectorize import polygonal, with_vertices, without_slivers

COARSER = 4  # 4x: a 1024-pixel chip then covers 4096 pixels of the working grid
# grid pixels: above an overlay's rounding (1e-12 on a 20,000-pixel grid), far below the spacing of traced
# vertices (1e-3, pointsam_engine.contours)
NODE_TOLERANCE = 1e-6


def retry_coarser(raster, cfg, norm: Normalization, predictor, instances: Sequence[Instance], run: ChipRun,
                  max_hole_px: float, stages, cancel=None,
                  notify: Optional[Callable[[float, str], None]] = None) -> Dict[str, int]:
    """Decode the objects the chip loop found cut by their chip again on a coarser grid; replace their
    polygons in ``run`` where the coarse mask is better. Returns the counts for the run report."""
    targets = np.flatnonzero(run.at_edge)
    if not len(targets):
        return {"coarse_retries": 0, "coarse_kept": 0}
    with Raster(raster, bands=cfg.bands, nodata=cfg.nodata, assume_crs=cfg.assume_crs,
                chip_scale=cfg.chip_scale * COARSER) as coarse:
        pos = to_working_each(coarse, [inst.pos for inst in instances])
        neg = to_working_each(coarse, [inst.neg for inst in instances])
        anchors = np.array([p.mean(axis=0) for p in pos])
        size = predictor.chip_size
        plan = _plan_over(targets, anchors, coarse.working_shape, size, cfg.chip_margin * size)

        def better(i: int, patch, at_edge: bool) -> bool:
            return not at_edge or patch.score > run.scores[i]

        def progress(fraction: float, message: str) -> None:
            if notify is not None:
                notify(0.9 + 0.02 * fraction, f"objects larger than a chip: {message}")

        retried = segment_chips(coarse, norm, predictor, plan, pos, neg, cfg, max_hole_px / COARSER ** 2, stages,
                                progress, cancel, accept=better)
    run.encoder_passes += retried.encoder_passes
    found = {int(i): (scale(retried.polygons[i], COARSER, COARSER, origin=(0, 0)), retried.scores[i])
             for i in targets if retried.polygons[i] is not None}
    _replace(run, found, settle=not cfg.keep_overlaps)
    run.calibrated[run.coarse] = retried.calibrated[run.coarse]
    return {"coarse_retries": len(targets), "coarse_kept": len(found)}


def _plan_over(targets: np.ndarray, anchors: np.ndarray, grid_shape, size: int, margin: float) -> ChipPlan:
    """Chips over the ``targets``' anchors (x, y on the grid); every other object whose anchor lies on a chip
    is its calibration neighbour there."""
    plan = plan_chips(anchors[targets, 1], anchors[targets, 0], grid_shape, size, margin)
    owner = np.full(len(anchors), -1)
    owner[targets] = plan.owner
    assigned = [targets[a] for a in plan.assigned]
    context = [_on_chip(anchors, chip, exclude=own) for chip, own in zip(plan.chips, assigned)]
    return ChipPlan(plan.chips, owner, assigned, context)


def _on_chip(anchors: np.ndarray, chip, exclude) -> np.ndarray:
    """Objects whose anchor (x, y on the grid) lies on the chip, other than ``exclude``."""
    inside = ((anchors[:, 0] >= chip.col0) & (anchors[:, 0] < chip.col0 + chip.size)
              & (anchors[:, 1] >= chip.row0) & (anchors[:, 1] < chip.row0 + chip.size))
    inside[np.asarray(exclude, dtype=int)] = False
    return np.flatnonzero(inside)


def _replace(run: ChipRun, found: Dict[int, tuple], settle: bool = True) -> None:
    """Put the coarse outlines (which do not overlap one another) in place; each gives way to the objects that
    keep their fine outline. One that gives way entirely keeps its fine outline, and the others give way to
    that too (again, until none gives way entirely). Without ``settle`` (``--keep-overlaps``) each coarse
    outline is put in place whole."""
    if not settle:
        for i, (outline, score) in found.items():
            run.polygons[i], run.scores[i], run.coarse[i] = outline, score, True
        return
    fixed = np.array([None if i in found else g for i, g in enumerate(run.polygons)], dtype=object)
    tree = shapely.STRtree(fixed)
    cut = {i: _minus(found[i][0], fixed[tree.query(found[i][0])]) for i in found}
    while True:
        placed = {i: outline for i, outline in cut.items() if outline is not None}
        fine = [run.polygons[i] for i, outline in cut.items() if outline is None]
        if not fine:
            break
        cut = {i: _minus(outline, fine) for i, outline in placed.items()}
    for i, outline in placed.items():
        run.polygons[i], run.scores[i], run.coarse[i] = outline, found[i][1], True
    _share_nodes(run.polygons, {i: found[i][0] for i in placed})


def _share_nodes(polygons: List[object], uncut: Dict[int, object]) -> None:
    """Give each outline that meets a cut one the vertices the cut added on their common edges (in place), so
    the polygons stay a coverage that :func:`~pointsam_engine.vectorize.simplify_coverage` simplifies without
    overlaps. ``uncut`` maps each cut outline's index to its outline before the cut.

    Cutting an outline against a neighbour's adds a vertex where their edges cross, computed a few ulps off
    the neighbour's edge; the neighbour lacks it, and coverage simplification keeps a wall shared only when
    both sides have the same vertices along it.
    """
    geoms = np.array(polygons, dtype=object)
    tree = shapely.STRtree(geoms)
    given: Dict[int, list] = {}
    for i, before in uncut.items():
        added = _added_vertices(geoms[i], before)
        if len(added):
            for j in tree.query(shapely.box(*(added.min(axis=0) - NODE_TOLERANCE), *(added.max(axis=0) + NODE_TOLERANCE))):
                if j != i and geoms[j] is not None:
                    given.setdefault(int(j), []).append(added)
    for j, points in given.items():
        polygons[j] = polygonal(with_vertices(geoms[j], np.concatenate(points), NODE_TOLERANCE))


def _added_vertices(after, before) -> np.ndarray:
    """(N, 2): the vertices of ``after`` that ``before`` lacks."""
    xy = shapely.get_coordinates(after)
    return xy[~np.isin(xy @ [1, 1j], shapely.get_coordinates(before) @ [1, 1j])]


def _minus(outline, others: Sequence[object]):
    """``outline`` less the ``others`` it meets and the slivers that leaves between near edges (None where
    nothing is left)."""
    others = np.array([g for g in others if g is not None], dtype=object)
    near = others[shapely.intersects(others, outline)] if len(others) else others
    rest = without_slivers(polygonal(outline.difference(shapely.union_all(near)))) if len(near) else outline
    return None if rest is None or rest.is_empty else rest
