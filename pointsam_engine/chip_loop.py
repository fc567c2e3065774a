"""The chip loop: encode each chip once, decode and calibrate its objects, settle the pixels they share.

Masks are held as rasters (float16 logits cut to their box) only until no later chip can meet them
(:func:`~pointsam_engine.chips.finalization_schedule`); then pixels shared with neighbouring chips' objects
go to the higher logit and the chip's objects are traced to polygons in one pass, so memory follows one
band of chips, not the whole layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from .calibration import Clicks, calibrate, overlapping_pairs, resolve_overlaps
from .chips import Chip, ChipPlan, finalization_schedule, neighbours
from .errors import Cancelled
from .masks import CLICK_LOGIT, MaskPatch, Prompt, as_half, signed_by
from .memory import release_freed_memory
from .sam.cache import embedding_key
from .vectorize import clean_mask, trace_logits


def check_cancel(cancel) -> None:
    """Raise :class:`Cancelled` once ``cancel`` (an Event, a callable returning True, or None) is set."""
    if cancel is None:
        return
    if cancel.is_set() if hasattr(cancel, "is_set") else cancel():
        raise Cancelled("the run was cancelled; nothing was written")


@dataclass
class ChipRun:
    """What the chip loop leaves: per object a traced polygon (working-grid pixels) and its score."""

    polygons: List[Optional[object]]
    scores: np.ndarray
    calibrated: np.ndarray
    chip_of: np.ndarray
    pairs_before: set = field(default_factory=set)
    pairs_after: set = field(default_factory=set)
    encoder_passes: int = 0
    cut: set = field(default_factory=set)  # objects that gave pixels away since they were cleaned
    at_edge: np.ndarray = None  # objects whose mask ran into an inner edge of their chip
    coarse: np.ndarray = None  # objects whose polygon comes from the coarser grid (pointsam_engine.coarse)

    def __post_init__(self):
        self.at_edge = np.zeros(len(self.polygons), dtype=bool) if self.at_edge is None else self.at_edge
        self.coarse = np.zeros(len(self.polygons), dtype=bool) if self.coarse is None else self.coarse


def chip_prompts(members_in: np.ndarray, pos_w, neg_w, chip: Chip, shape):
    """The prompts of the objects with a positive click on ``chip`` (chip pixels; clicks off the chip dropped):
    ``(object ids, prompts, positive clicks)``. All clicks are moved and sorted in one pass, so each
    object costs slices of one array, not array building of its own."""
    ids = members_in.astype(int)
    if not len(ids):
        return [], [], []
    groups = [pos_w[i] for i in ids] + [neg_w[i] for i in ids]
    sizes = [len(g) for g in groups]
    points = np.vstack(groups) - (chip.col0, chip.row0)
    owner = np.repeat(np.tile(np.arange(len(ids)), 2), sizes)
    label = np.repeat(np.repeat([1, 0], len(ids)), sizes)
    on_chip = (points[:, 0] >= 0) & (points[:, 0] < shape[1]) & (points[:, 1] >= 0) & (points[:, 1] < shape[0])
    order = np.lexsort((-label[on_chip], owner[on_chip]))  # by object, positives first, clicks in their order
    points, owner, label = points[on_chip][order], owner[on_chip][order], label[on_chip][order]
    counts = np.bincount(owner, minlength=len(ids))
    n_pos = np.bincount(owner, weights=label, minlength=len(ids)).astype(int)
    starts = np.cumsum(counts) - counts
    members, prompts, positives = [], [], []
    for k in np.flatnonzero(n_pos):
        start, end = starts[k], starts[k] + counts[k]
        members.append(int(ids[k]))
        positives.append(points[start:start + n_pos[k]])
        prompts.append(Prompt(points[start:end], label[start:end]))
    return members, prompts, positives


def segment_chips(ras, norm, predictor, plan: ChipPlan, pos_w, neg_w, cfg, max_hole_px: float, stages, notify,
                   cancel, accept: Optional[Callable[[int, MaskPatch, bool], bool]] = None) -> ChipRun:
    """Encode each chip once, decode and calibrate its objects, and settle shared pixels chip by chip.

    Masks are held as rasters only until no later chip can meet them (:func:`finalization_schedule`),
    then traced to polygons, so memory follows one band of chips, not the whole layer. ``accept(object,
    mask, runs into the chip's edge)``, where given, drops the masks it refuses before they claim any pixel.
    """
    n = len(pos_w)
    run = ChipRun([None] * n, np.zeros(n), np.zeros(n, dtype=bool), plan.owner.copy())
    patches: Dict[int, MaskPatch] = {}
    held: Dict[int, List[int]] = {}
    schedule, near = finalization_schedule(plan.chips), neighbours(plan.chips)
    fingerprint = ras.fingerprint()
    for k, chip in enumerate(plan.chips):
        check_cancel(cancel)
        notify(0.05 + 0.85 * k / len(plan.chips), f"encoding chip {k + 1}/{len(plan.chips)}")
        image = encode_chip(ras, chip, norm, predictor, fingerprint, run, stages)
        members, prompts, positives = chip_prompts(np.concatenate([plan.assigned[k], plan.context[k]]), pos_w, neg_w,
                                                    chip, image.shape[:2])
        n_own = int(np.isin(members, plan.assigned[k]).sum())  # assigned members come first

        def finish(a: int, patch: Optional[MaskPatch]) -> Optional[MaskPatch]:
            run.at_edge[members[a]] = runs_into_edge(patch, chip, image.shape[:2], ras.working_shape)
            if patch is not None and accept is not None and not accept(members[a], patch, run.at_edge[members[a]]):
                return None
            with stages("resolve"):
                return None if patch is None else clean_patch(patch, positives[a], max_hole_px)

        def decoded(done: int, k=k, n_own=n_own) -> None:  # a chip can own hundreds of objects: say how far it is
            notify(0.05 + 0.85 * (k + done / max(n_own, 1)) / len(plan.chips),
                   f"decoding chip {k + 1}/{len(plan.chips)}: {done}/{n_own} objects")

        before, results, redone = decode_chip(predictor, prompts, positives, n_own, cfg, stages, finish, decoded)
        run.pairs_before |= {pair_of(members[a], members[b]) for a, b in before}
        run.calibrated[[members[a] for a in redone]] = True
        with stages("resolve"):
            shared = overlapping_pairs(results) if cfg.keep_overlaps else resolve_overlaps(results)
            run.pairs_after |= {pair_of(members[a], members[b]) for a, b in shared}
            run.cut.update(members[a] for pair in ([] if cfg.keep_overlaps else shared) for a in pair)
        held[k] = members[:n_own]
        for a, patch in enumerate(results):
            if patch is not None:
                patches[members[a]] = _compact(patch.shifted(chip.row0, chip.col0))
                run.scores[members[a]] = patch.score
        for j in schedule[k]:
            with stages("resolve"):
                _settle(j, held, near, patches, pos_w, run, resolve=not cfg.keep_overlaps)
        release_freed_memory()
        notify(0.05 + 0.85 * (k + 1) / len(plan.chips), f"chip {k + 1}/{len(plan.chips)}")
    return run


def encode_chip(ras, chip: Chip, norm, predictor, fingerprint: str, run: ChipRun, stages) -> np.ndarray:
    """Read a chip of ``ras``'s working grid and set it on the predictor (the encoder runs unless the embedding
    cache holds it; ``run`` counts the passes). Returns the chip's image."""
    with stages("read"):
        image, valid = ras.read_chip(chip.row0, chip.col0, chip.size, norm)
    key = embedding_key(raster=fingerprint, stretch=norm.to_dict(), window=(chip.row0, chip.col0, chip.size),
                        scale=ras.scale, model=predictor.label)
    with stages("encode"):
        run.encoder_passes += bool(predictor.set_chip(image, valid, key))
    return image


def decode_chip(predictor, prompts: List[Prompt], positives: List[np.ndarray], n_own: int, cfg, stages,
                finish: Callable[[int, Optional[MaskPatch]], Any], decoded: Callable[[int], None] = lambda done: None):
    """Decode the chip's first ``n_own`` prompts and calibrate them against every prompt's clicks.

    Neighbours owned by other chips are not decoded here: their clicks still count for calibration (a mask
    holding them), and settling resolves any pixel they share later. The own objects are decoded
    :data:`DECODE_GROUP` at a time, nearest together, so a chip's raw masks never pile up (a coarse chip can
    own hundreds of objects): within a group masks are neighbours by overlap or by a held click, across groups
    by a held click. Each object's final mask goes to ``finish(index, mask)`` as soon as it is known; what
    ``finish`` returns is kept; ``decoded(count)`` hears how many own objects are done after each group but the last.

    Returns ``(pairs of own objects whose first-pass masks overlap; finish's results; the indices calibration
    predicted again)``.
    """
    overlapped, kept, redone, done = set(), [None] * n_own, [], 0
    clicks = Clicks(positives)
    batch = cfg.decoder_batch or getattr(predictor, "decoder_batch", 1)
    for group in _groups(positives[:n_own], DECODE_GROUP):
        with stages("decode"):
            first = [None] * len(prompts)
            for a, patch in zip(group, _predict_half(predictor, [prompts[a] for a in group], batch)):
                first[a] = patch
        overlapped |= overlapping_pairs(first)
        redo: dict = {}
        if cfg.calibration:
            with stages("calibrate"):
                redo, _ = calibrate(prompts, first, clicks, group,
                                    lambda ps: _predict_half(predictor, ps, batch), cfg.calibration_iou)
        for a in group:
            kept[a] = finish(a, redo.get(a, first[a]))
        redone += sorted(redo)
        done += len(group)
        if done < n_own:  # the last group's end is the chip's own
            decoded(done)
    return overlapped, kept, sorted(redone)


DECODE_GROUP = 32  # own objects decoded and calibrated together: ~5 MB each at most (a 1024² chip's raw masks)


def _groups(positives: List[np.ndarray], size: int) -> List[List[int]]:
    """Indices of ``positives`` in groups of at most ``size`` taken along rows of their first click, each in
    index order (so a chip of at most ``size`` objects is one group, decoded in its given order)."""
    order = sorted(range(len(positives)), key=lambda a: (positives[a][0][1], positives[a][0][0]))
    return [sorted(order[start:start + size]) for start in range(0, len(order), size)]


def runs_into_edge(patch: Optional[MaskPatch], chip: Chip, shape, grid_shape) -> bool:
    """Whether a mask (chip pixels) reaches an edge of the chip's ``shape`` that is not the grid's edge: the
    chip, not the object's outline, stopped it there."""
    if patch is None:
        return False
    mask = patch.mask
    rows, cols = np.flatnonzero(mask.any(axis=1)) + patch.row0, np.flatnonzero(mask.any(axis=0)) + patch.col0
    if not len(rows):
        return False
    return bool((rows[0] <= 0 < chip.row0) or (cols[0] <= 0 < chip.col0)
                or (rows[-1] >= shape[0] - 1 and chip.row0 + shape[0] < grid_shape[0])
                or (cols[-1] >= shape[1] - 1 and chip.col0 + shape[1] < grid_shape[1]))


def _settle(j: int, held, near, patches: Dict[int, MaskPatch], pos_w, run: ChipRun, resolve: bool = True) -> None:
    """Give pixels shared with neighbouring chips' objects to the higher logit (unless ``resolve`` is off),
    then trace chip j's objects at sub-pixel precision from their logits."""
    own = held.pop(j)
    nearby = []
    if resolve:
        mine = [i for i in own if i in patches]
        nearby = mine + [i for m in near[j] if m in held for i in held[m] if i in patches]
        pairs = {pair_of(nearby[a], nearby[b]) for a, b in resolve_overlaps([patches[i] for i in nearby], len(mine))}
        run.pairs_after |= pairs
        run.cut.update(i for pair in pairs for i in pair)
    kept = {}
    for i in own:
        patch = patches.pop(i, None)
        if patch is not None:  # a mask that gave pixels away may have lost the link to a part: drop that part
            mask = clean_mask(patch, pos_w[i], 0) if i in run.cut else patch.mask
            kept[i] = (patch, mask)
        run.cut.discard(i)
    # once shared pixels are settled no two masks share one, so the chip's objects are traced in one pass
    # neighbours still held are traced later: they draw the walls they share with these objects from here
    context = {i: (patches[i], patches[i].mask) for i in nearby if i in patches}
    traced = trace_logits(kept, context) if resolve else {i: trace_logits({i: kept[i]})[i] for i in kept}
    for i, polygon in traced.items():
        run.polygons[i] = polygon


def _predict_half(predictor, prompts: List[Prompt], batch: int) -> List[Optional[MaskPatch]]:
    """Decode ``batch`` prompts at a time and keep float16 logits, so a chip's float32 masks never pile up."""
    out: List[Optional[MaskPatch]] = []
    for start in range(0, len(prompts), batch):
        out += [_half(p) for p in predictor.predict(prompts[start:start + batch])]
    return out


def _half(patch: Optional[MaskPatch]) -> Optional[MaskPatch]:
    """Logits as float16: masks of a whole chip's objects are held at once, and comparisons need no more."""
    return None if patch is None else MaskPatch(patch.row0, patch.col0, as_half(patch.logits), patch.score)


def _compact(patch: MaskPatch) -> MaskPatch:
    """Cut to the mask's box and a pixel around it (where the outline's edge is interpolated), and keep
    logits as float16 while the patch waits to be settled."""
    patch = patch.cropped(margin=1)
    return MaskPatch(patch.row0, patch.col0, patch.logits.astype(np.float16), patch.score)  # a copy: the crop's base is released


def pair_of(a: int, b: int) -> tuple:
    return (min(a, b), max(a, b))


def clean_patch(patch: MaskPatch, clicks: np.ndarray, max_hole_px: float) -> Optional[MaskPatch]:
    """Fill small holes and keep only the parts holding a click; cut to the mask's box and a pixel around it
    (where tracing interpolates the edge). The pixels of the object's own clicks that the mask holds get
    :data:`CLICK_LOGIT`, so settling shared pixels never gives them to a neighbour."""
    keep = clean_mask(patch, clicks, max_hole_px)
    logits = signed_by(patch.logits, keep)
    rows = np.floor(clicks[:, 1]).astype(int) - patch.row0
    cols = np.floor(clicks[:, 0]).astype(int) - patch.col0
    inside = (rows >= 0) & (rows < keep.shape[0]) & (cols >= 0) & (cols < keep.shape[1])
    rows, cols = rows[inside], cols[inside]
    logits[rows[keep[rows, cols]], cols[keep[rows, cols]]] = CLICK_LOGIT
    cleaned = MaskPatch(patch.row0, patch.col0, logits, patch.score).cropped(margin=1)
    return cleaned if cleaned.logits.size else None
