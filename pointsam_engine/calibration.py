"""Negative prompt calibration, and the rule that no two output objects share a pixel.

PointSAM's calibration (:func:`calibrate`, :func:`find_neighbours`): an object whose first-pass mask overlaps
another's (mask IoU above ``calibration_iou``, or holding another object's positive click) is predicted again
with those neighbours' positive clicks added as negative prompts (:func:`with_negatives`; the
:data:`MAX_NEIGHBOURS` nearest, as the paper draws a few negatives from that pool). The engine
calibrates each chip's objects at inference (:mod:`pointsam_engine.pipeline`); ``pointsam train`` calibrates
its teacher's pseudo-labels with the same functions (``training.selftrain``).

Then :func:`resolve_overlaps` gives every pixel still claimed twice to the object with the higher logit, pair
by pair, chip by chip (``among``); with ``keep_overlaps`` the engine only reports the pairs
(:func:`overlapping_pairs`).

Everything works on :class:`~pointsam_engine.masks.MaskPatch` objects with numpy; the masks that meet are
found with shapely's STRtree over their boxes, so n masks cost O(n log n), not O(n²). The predictor is passed
in, so a stub can stand in for SAM, and this module never imports torch.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import shapely

from .masks import MaskPatch, Prompt, positive

MAX_NEIGHBOURS = 8  # negatives per calibrated prompt: the nearest neighbours' clicks. SAM was trained with up to
# about a dozen clicks per prompt, and the decoder's cost grows with each one (40 doubled it)


def _window(a: MaskPatch, b: MaskPatch) -> Optional[Tuple[int, int, int, int]]:
    r0, c0 = max(a.row0, b.row0), max(a.col0, b.col0)
    r1 = min(a.row0 + a.shape[0], b.row0 + b.shape[0])
    c1 = min(a.col0 + a.shape[1], b.col0 + b.shape[1])
    return (r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None


def _view(p: MaskPatch, win) -> np.ndarray:
    r0, r1, c0, c1 = win
    return p.logits[r0 - p.row0:r1 - p.row0, c0 - p.col0:c1 - p.col0]


def shared_pixels(a: Optional[MaskPatch], b: Optional[MaskPatch]) -> int:
    """Number of pixels both masks claim."""
    if a is None or b is None:
        return 0
    win = _window(a, b)
    return 0 if win is None else np.count_nonzero(positive(_view(a, win)) & positive(_view(b, win)))


def mask_iou(a: Optional[MaskPatch], b: Optional[MaskPatch]) -> float:
    inter = shared_pixels(a, b)
    if inter == 0:
        return 0.0
    return inter / (int(a.mask.sum()) + int(b.mask.sum()) - inter)


def contains_points(patch: Optional[MaskPatch], points: np.ndarray) -> bool:
    """Whether the mask covers any of ``points`` ((N, 2) x, y on the patch's grid)."""
    if patch is None or len(points) == 0:
        return False
    rows = np.floor(points[:, 1]).astype(int) - patch.row0
    cols = np.floor(points[:, 0]).astype(int) - patch.col0
    inside = (rows >= 0) & (rows < patch.shape[0]) & (cols >= 0) & (cols < patch.shape[1])
    return bool(inside.any() and positive(patch.logits[rows[inside], cols[inside]]).any())


class Clicks:
    """Every object's positive clicks ((N, 2) x, y on one grid), flattened once, with a spatial index built on
    first use. A chip calibrated a group at a time passes one of these to :func:`calibrate`, so each group looks
    the chip's clicks up instead of flattening them again (which cost O(objects²) per chip)."""

    def __init__(self, positives: Sequence[np.ndarray]):
        self.groups = [np.asarray(p, float).reshape(-1, 2) for p in positives]
        self.owners = np.repeat(np.arange(len(self.groups)), [len(g) for g in self.groups])
        self.xy = np.vstack(self.groups) if self.groups else np.zeros((0, 2))
        self._tree: Optional[shapely.STRtree] = None

    @classmethod
    def of(cls, positives: Union["Clicks", Sequence[np.ndarray]]) -> "Clicks":
        return positives if isinstance(positives, Clicks) else cls(positives)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.groups[i]

    def owners_in(self, boxes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """``(box index, owner)`` for every click inside or on the edge of each (xmin, ymin, xmax, ymax) box."""
        if not len(self.xy) or not len(boxes):
            return np.zeros(0, int), np.zeros(0, int)
        if self._tree is None:
            self._tree = shapely.STRtree(shapely.points(self.xy))
        box, click = self._tree.query(shapely.box(*boxes.T), predicate="intersects")
        return box, self.owners[click]


def find_neighbours(patches: Sequence[Optional[MaskPatch]], positives: Union[Clicks, Sequence[np.ndarray]],
                    targets: Sequence[int], iou_threshold: float = 0.1,
                    max_neighbours: int = MAX_NEIGHBOURS) -> Dict[int, List[int]]:
    """For each target object, the others whose masks overlap it (IoU > threshold, or its mask holds their click):
    the ``max_neighbours`` whose clicks are nearest the target's, in index order.

    An object whose mask is unknown (``None``) can still be a neighbour through its clicks. Only objects whose
    mask box or clicks meet the target's mask box are compared (a spatial index), so a chip with thousands of
    clicks costs O(n log n), not O(n²).
    """
    targets = [i for i in targets if patches[i] is not None and patches[i].logits.size]
    if not targets:
        return {}
    candidates: Dict[int, Set[int]] = {i: set() for i in targets}
    wanted = set(targets)
    for i, j in _candidate_pairs(patches):  # masks whose boxes meet: compared by IoU
        for a, b in ((i, j), (j, i)):
            if a in wanted:
                candidates[a].add(b)
    positives = Clicks.of(positives)
    for t, owner in zip(*positives.owners_in(_boxes(patches, targets))):  # clicks in a mask's box: held or not
        candidates[targets[t]].add(int(owner))
    found: Dict[int, List[int]] = {}
    overlap = _Overlap(patches)
    for i in targets:
        others = sorted(candidates[i] - {i})
        held = _holds_each(patches[i], [positives[j] for j in others])
        js = [j for j, holds in zip(others, held) if holds or overlap.iou(i, j) > iou_threshold]
        if js:
            found[i] = _nearest(js, positives, i, max_neighbours)
    return found


def _nearest(others: List[int], positives: Sequence[np.ndarray], i: int, count: int) -> List[int]:
    """The ``count`` of ``others`` whose clicks come nearest object ``i``'s, in their given order."""
    if len(others) <= count:
        return others
    mine = np.asarray(positives[i], float).reshape(-1, 2)
    gap = [np.linalg.norm(np.asarray(positives[j], float).reshape(-1, 2)[:, None] - mine[None], axis=2).min()
           for j in others]
    keep = set(np.argsort(gap, kind="stable")[:count].tolist())
    return [j for k, j in enumerate(others) if k in keep]


def _holds_each(patch: MaskPatch, clicks: Sequence[np.ndarray]) -> np.ndarray:
    """For each group of clicks ((N, 2) x, y on the patch's grid), whether the mask covers any of them."""
    if not clicks:
        return np.zeros(0, dtype=bool)
    points = np.vstack([np.asarray(c, float).reshape(-1, 2) for c in clicks])
    group = np.repeat(np.arange(len(clicks)), [len(c) for c in clicks])
    rows = np.floor(points[:, 1]).astype(int) - patch.row0
    cols = np.floor(points[:, 0]).astype(int) - patch.col0
    inside = (rows >= 0) & (rows < patch.shape[0]) & (cols >= 0) & (cols < patch.shape[1])
    hit = np.zeros(len(points), dtype=bool)
    hit[inside] = positive(patch.logits[rows[inside], cols[inside]])
    return np.bincount(group[hit], minlength=len(clicks)) > 0


class _Overlap:
    """:func:`mask_iou` of pairs of ``patches``, each mask thresholded and counted once, each pair measured once
    (a chip's first-pass masks can each meet hundreds of others)."""

    def __init__(self, patches: Sequence[Optional[MaskPatch]]):
        self.patches = patches
        self._masks: Dict[int, np.ndarray] = {}
        self._areas: Dict[int, int] = {}
        self._ious: Dict[Tuple[int, int], float] = {}

    def _mask(self, k: int) -> np.ndarray:
        if k not in self._masks:
            self._masks[k] = self.patches[k].mask
            self._areas[k] = np.count_nonzero(self._masks[k])
        return self._masks[k]

    def iou(self, i: int, j: int) -> float:
        key = (min(i, j), max(i, j))
        if key not in self._ious:
            self._ious[key] = self._measure(*key)
        return self._ious[key]

    def _measure(self, i: int, j: int) -> float:
        a, b = self.patches[i], self.patches[j]
        win = None if a is None or b is None else _window(a, b)
        if win is None:
            return 0.0
        r0, r1, c0, c1 = win
        inter = np.count_nonzero(self._mask(i)[r0 - a.row0:r1 - a.row0, c0 - a.col0:c1 - a.col0]
                                 & self._mask(j)[r0 - b.row0:r1 - b.row0, c0 - b.col0:c1 - b.col0])
        return inter / (self._areas[i] + self._areas[j] - inter) if inter else 0.0


def _boxes(patches: Sequence[Optional[MaskPatch]], which: Sequence[int]) -> np.ndarray:
    """(N, 4) xmin, ymin, xmax, ymax (column, row) of the patches ``which``."""
    corners = np.fromiter(((patches[i].col0, patches[i].row0) + patches[i].shape for i in which),
                          dtype=np.dtype((float, 4)), count=len(which))
    corners[:, 2:] = corners[:, 2:][:, ::-1] + corners[:, :2]  # (rows, cols) sizes to xmax, ymax
    return corners


def with_negatives(prompt: Prompt, negatives: np.ndarray) -> Prompt:
    """The prompt with extra negative clicks appended."""
    if len(negatives) == 0:
        return prompt
    return Prompt(np.vstack([prompt.points, negatives]),
                  np.concatenate([prompt.labels, np.zeros(len(negatives), dtype=prompt.labels.dtype)]))


def calibrate(prompts: Sequence[Prompt], first: Sequence[Optional[MaskPatch]],
              positives: Union[Clicks, Sequence[np.ndarray]],
              targets: Sequence[int], predict: Callable[[List[Prompt]], List[Optional[MaskPatch]]],
              iou_threshold: float = 0.1) -> Tuple[Dict[int, Optional[MaskPatch]], Dict[int, List[int]]]:
    """Predict again every target whose first-pass mask overlaps a neighbour, with the neighbours' clicks as negatives.

    Args:
        prompts: each object's original prompt (chip pixels).
        first: each object's first-pass mask.
        positives: each object's positive clicks, (N, 2) x, y (or a :class:`Clicks` of them, built once for
            many calls).
        targets: the objects that may be re-predicted (the others only serve as neighbours).
        predict: the predictor's ``predict``.
    Returns:
        ``({object: new mask}, {object: neighbours used})`` for the re-predicted objects.
    """
    neighbours = find_neighbours(first, positives, targets, iou_threshold)
    if not neighbours:
        return {}, {}
    order = list(neighbours)
    new_prompts = [with_negatives(prompts[i], np.vstack([positives[j] for j in neighbours[i]])) for i in order]
    return dict(zip(order, predict(new_prompts))), neighbours


def _candidate_pairs(patches: Sequence[Optional[MaskPatch]], among: Optional[int] = None) -> List[Tuple[int, int]]:
    """Pairs of masks whose boxes overlap, found with a spatial index (O(n log n) for n masks), in the order a
    sweep along rows meets them (so settling shared pixels gives the same result as comparing every pair).
    ``among``: only pairs with at least one of the first ``among`` masks."""
    live = [i for i, p in enumerate(patches) if p is not None and p.logits.size]
    if len(live) < 2:
        return []
    box = _boxes(patches, live)
    boxes = shapely.box(*box.T)
    query = len(live) if among is None else int(np.searchsorted(live, among))
    left, right = shapely.STRtree(boxes).query(boxes[:query], predicate="intersects")
    # strict overlap (touching boxes share no pixel)
    keep = (left != right) & (box[left, 1] < box[right, 3]) & (box[right, 1] < box[left, 3]) \
        & (box[left, 0] < box[right, 2]) & (box[right, 0] < box[left, 2])
    rank = np.empty(len(live), int)
    rank[np.argsort(box[:, 1], kind="stable")] = np.arange(len(live))
    left, right = left[keep], right[keep]
    swap = rank[left] > rank[right]  # each pair from the box the sweep meets first, once
    first, second = np.where(swap, right, left), np.where(swap, left, right)
    code = np.unique(rank[first] * len(live) + rank[second])  # sorted: by the first box, then the second
    by_rank = np.argsort(rank)
    return [(live[min(a, b)], live[max(a, b)]) for a, b in zip(by_rank[code // len(live)], by_rank[code % len(live)])]


def overlapping_pairs(patches: Sequence[Optional[MaskPatch]]) -> Set[Tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, whose masks share at least one pixel."""
    overlap = _Overlap(patches)
    return {(i, j) for i, j in _candidate_pairs(patches) if overlap.iou(i, j) > 0}


def resolve_overlaps(patches: List[Optional[MaskPatch]], among: Optional[int] = None) -> Set[Tuple[int, int]]:
    """Give every pixel claimed by two masks to the one with the higher logit, in place.

    Returns the pairs that overlapped. Afterwards no two masks share a pixel: a pixel is only ever
    taken away, and each pair that shares it is settled once. ``among``: settle only pairs with at least
    one of the first ``among`` masks (the others are settled when their own turn comes).
    """
    resolved = set()
    for i, j in _candidate_pairs(patches, among):
        a, b = patches[i], patches[j]
        win = _window(a, b)
        va, vb = _view(a, win), _view(b, win)
        both = positive(va) & positive(vb)
        if not both.any():
            continue
        resolved.add((i, j))
        for patch in (a, b):
            if not patch.logits.flags.writeable or patch.logits.base is not None:
                patch.logits = patch.logits.copy()
        va, vb = _view(a, win), _view(b, win)
        a_wins = both & (va >= vb)
        vb[a_wins] = -np.abs(vb[a_wins]) - 1e-3
        va[both & ~a_wins] = -np.abs(va[both & ~a_wins]) - 1e-3
    return resolved
