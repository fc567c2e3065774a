"""Objects larger than a chip: decoded again on a coarser grid.

A mask that runs into an inner edge of its chip (an edge that is not the raster's) was stopped by the chip,
not by the object's outline: a warehouse, a stadium, a tanker in a 1024-pixel chip at 0.3 m. After the
chip loop such objects are decoded again on a grid :data:`COARSER` times coarser, with chips planned over
those objects only (they share encoder passes), each object's prompt as before and every other object's
clicks on the coarse chip as calibration neighbours. The coarse mask replaces the fine one when it does not
run into its own chip's inner edge, or when the model scores it higher; its outline then gives way to its
neighbours' (finer) outlines, so no two objects overlap.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import shapely
from shapely.affinity import scale

from .chip_loop import ChipRun, check_cancel, chip_prompts, clean_patch, decode_chip, encode_chip, runs_into_edge
from .chips import plan_chips
from .points import Instance
from .raster import Normalization, Raster, to_working_each
from .vectorize import polygonal, trace_logits, with_vertices, without_slivers

COARSER = 4  # 4x: a 1024-pixel chip then covers 4096 pixels of the working grid
# grid pixels: above an overlay's rounding (1e-12 on a 20,000-pixel grid), far below the spacing of traced
# vertices (1e-3, pointsam_engine.contours)
NODE_TOLERANCE = 1e-6


def retry_coarser(raster, cfg, norm: Normalization, predictor, instances: Sequence[Instance], run: ChipRun,
                  max_hole_px: float, stages, cancel=None) -> Dict[str, int]:
    """Decode the objects the chip loop found cut by their chip again on a coarser grid; replace their
    polygons in ``run`` where the coarse mask is better. Returns the counts for the run report."""
    targets = np.flatnonzero(run.at_edge)
    if not len(targets):
        return {"coarse_retries": 0, "coarse_kept": 0}
    found: Dict[int, tuple] = {}
    with Raster(raster, bands=cfg.bands, nodata=cfg.nodata, assume_crs=cfg.assume_crs,
                chip_scale=cfg.chip_scale * COARSER) as coarse:
        pos = to_working_each(coarse, [inst.pos for inst in instances])
        neg = to_working_each(coarse, [inst.neg for inst in instances])
        anchors = np.array([p.mean(axis=0) for p in pos])
        size = predictor.chip_size
        plan = plan_chips(anchors[targets, 1], anchors[targets, 0], coarse.working_shape, size, cfg.chip_margin * size)
        fingerprint = coarse.fingerprint()
        for k, chip in enumerate(plan.chips):
            check_cancel(cancel)
            image = encode_chip(coarse, chip, norm, predictor, fingerprint, run, stages)
            own = targets[plan.assigned[k]]
            others = _on_chip(anchors, chip, image.shape[:2], exclude=own)
            members, prompts, positives = chip_prompts(np.concatenate([own, others]), pos, neg, chip, image.shape[:2])
            n_own = int(np.isin(members, own).sum())
            decode_chip(predictor, prompts, positives, n_own, cfg, stages,
                        lambda a, patch: _keep_better(found, members[a], patch, positives[a], chip, image.shape[:2],
                                                      coarse.working_shape, run.scores[members[a]], max_hole_px))
    _replace(run, found, settle=not cfg.keep_overlaps)
    return {"coarse_retries": len(targets), "coarse_kept": len(found)}


def _keep_better(found: Dict[int, tuple], i: int, patch, clicks: np.ndarray, chip, shape, grid_shape,
                 fine_score: float, max_hole_px: float) -> None:
    """Put object ``i``'s coarse outline (on the fine grid) and score in ``found`` when its coarse mask does not
    run into the chip's inner edge, or scores higher than the fine one."""
    if patch is None or (runs_into_edge(patch, chip, shape, grid_shape) and patch.score <= fine_score):
        return
    cleaned = clean_patch(patch, clicks, max_hole_px / COARSER ** 2)
    if cleaned is not None:
        cleaned = cleaned.shifted(chip.row0, chip.col0)
        outline = trace_logits({i: (cleaned, cleaned.mask)})[i]
        found[i] = (scale(outline, COARSER, COARSER, origin=(0, 0)), cleaned.score)


def _on_chip(anchors: np.ndarray, chip, shape, exclude) -> np.ndarray:
    """Objects whose anchor (x, y on the grid) lies on the chip, other than ``exclude``."""
    inside = ((anchors[:, 0] >= chip.col0) & (anchors[:, 0] < chip.col0 + shape[1])
              & (anchors[:, 1] >= chip.row0) & (anchors[:, 1] < chip.row0 + shape[0]))
    inside[np.asarray(exclude, dtype=int)] = False
    return np.flatnonzero(inside)


def _replace(run: ChipRun, found: Dict[int, tuple], settle: bool = True) -> None:
    """Put the coarse outlines in place; each gives way to the objects that keep their fine outline, and
    between two coarse ones the lower score gives way. One that gives way entirely keeps its fine outline.
    Without ``settle`` (``--keep-overlaps``) each coarse outline is put in place whole."""
    if not settle:
        for i, (outline, score) in found.items():
            run.polygons[i], run.scores[i], run.coarse[i] = outline, score, True
        return
    fixed = np.array([None if i in found else g for i, g in enumerate(run.polygons)], dtype=object)
    tree = shapely.STRtree(fixed)
    placed: Dict[int, object] = {}
    for i in sorted(found, key=lambda i: -found[i][1]):
        outline = found[i][0]
        outline = _minus(outline, list(fixed[tree.query(outline)]) + list(placed.values()))
        if outline is not None:
            placed[i] = outline
    fine = [run.polygons[i] for i in found if i not in placed]
    for i, outline in placed.items():
        outline = _minus(outline, fine)
        if outline is not None:
            run.polygons[i], run.scores[i], run.coarse[i] = outline, found[i][1], True
    _share_nodes(run.polygons, {i: found[i][0] for i in placed if run.coarse[i]})


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


def _minus(outline, others: List[object]):
    """``outline`` less the ``others`` it meets and the slivers that leaves between near edges (None where
    nothing is left)."""
    others = [g for g in others if g is not None]
    near = [g for g in others if shapely.intersects(g, outline)] if others else []
    rest = without_slivers(polygonal(outline.difference(shapely.union_all(near)))) if near else outline
    return None if rest is None or rest.is_empty else rest
