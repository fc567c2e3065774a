"""One PointSAM self-training step on one chip: calibrated teacher, pseudo-labels, strongly augmented student.

1. Weak view: a random flip/quarter turn of the chip and of every click (:mod:`training.augment`).
2. Prompts from clicks only: each trained object's positive clicks, the user's negative clicks, and
   ``background`` random points far from every positive click and outside the teacher's masks.
3. Teacher (the current weights, ``no_grad``): masks for every object in the chip, with ``teacher_views``
   above 1 the mean of its logits over that many flips/turns of the weak view (:class:`TeacherViews`;
   beyond the paper). Where a trained
   object's mask overlaps another object's (IoU above ``calibration_iou``) or holds its click, that
   object's positive clicks become extra negatives and the teacher predicts again (negative prompt
   calibration, with the engine's :func:`find_neighbours` and :func:`with_negatives`). The teacher's
   thresholded masks are the pseudo-labels.
4. Student (the same weights, with gradient): the strong photometric view of the same geometry, with
   the original prompts. Loss: 20 focal (gamma 2) + Dice + MSE of the IoU head, + ``prototype_weight``
   times the prototype loss on the student's mask-pooled features (:mod:`training.prototypes`).
   The focal term weighs object and background pixels alike (alpha 0.5 for both): lightning-sam's
   alpha 0.8, which PointSAM inherits, is a scale, not a class weight (why: docs/accuracy.md, "Measurements
   behind the code").
5. Anchor (``anchor_weight`` above 0; beyond the paper, after WeSAM's frozen anchor network): the student
   also fits the base model's masks (the adapters switched off, :func:`pointsam_engine.sam.lora.base_model`)
   for the same weak view and prompts, ``anchor_weight`` times 20 focal + Dice. Where teacher and base
   model agree it changes nothing. Where the teacher's masks have grown past the base model's, the
   student is pulled back towards the base model, so the loop of grown pseudo-labels teaching more
   growth, the form self-training's drift takes here (docs/accuracy.md), cannot run away. It costs one
   more ``no_grad`` encoder pass per step and no memory: the base model is the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from pointsam_engine.calibration import find_neighbours, with_negatives
from pointsam_engine.config import TRAIN, SegmentConfig
from pointsam_engine.masks import MaskPatch, Prompt
from pointsam_engine.sam.decode import decode_groups, embed
from pointsam_engine.sam.lora import base_model

from .augment import SPREAD_VIEWS, random_dihedral, strong_view
from .objective import mask_terms
from .prototypes import PrototypeRegularizer, instance_features
from .regions import TrainingChip, background_negatives

FOCAL_ALPHA = 0.5


@dataclass(frozen=True)
class SelfTrainOptions:
    max_objects: int = 16  # objects trained per chip (PointSAM: 30-50 per image; chips are smaller)
    background: int = TRAIN.background  # random background negatives per object
    calibration: bool = True
    calibration_iou: float = SegmentConfig.calibration_iou
    prototypes: bool = True
    prototype_weight: float = TRAIN.prototype_weight
    strong: bool = True  # False: the student sees the weak view too
    supervised: bool = False  # truth masks instead of pseudo-labels: the upper bound of benchmarks only
    anchor_weight: float = TRAIN.anchor_weight  # the base model's masks as an anchor against drift; 0: PointSAM as published
    teacher_views: int = 1  # pseudo-labels averaged over this many flips/turns of the weak view; 1: as published


@dataclass
class StepResult:
    loss: torch.Tensor
    terms: Dict[str, float]
    teacher_features: Optional[torch.Tensor]


def kept_masks(sam, embedding, prompts: List[Prompt]) -> List[MaskPatch]:
    """Each prompt's mask at the decoder's resolution, the one the engine keeps (first by the IoU head)."""
    out: List[Optional[MaskPatch]] = [None] * len(prompts)
    for batch in decode_groups(sam, embedding, prompts):
        for b, (i, k) in enumerate(zip(batch.indices, batch.kept().tolist())):
            out[i] = MaskPatch(0, 0, batch.logits[b, k].float().cpu().numpy(), float(batch.iou[b, k]))
    return out


class TeacherViews:
    """The teacher's masks for prompts in the weak view: the mean of its logits over ``count`` flips/turns of it.

    Each view is encoded once; prompts are moved into every view and the logits brought back to the weak
    view's geometry before they are averaged. One view is the paper's teacher."""

    def __init__(self, sam, image: np.ndarray, count: int = 1):
        if not 1 <= count <= len(SPREAD_VIEWS):
            raise ValueError(f"teacher_views must be 1-{len(SPREAD_VIEWS)}, got {count}")
        self.sam, self.size = sam, image.shape[0]
        self.views = [(v, embed(sam, v.image(image))) for v in SPREAD_VIEWS[:count]]

    @property
    def embedding(self) -> torch.Tensor:
        """The weak view's own image embedding."""
        return self.views[0][1]

    def masks(self, prompts: List[Prompt]) -> List[MaskPatch]:
        runs = [kept_masks(self.sam, embedding, [Prompt(view.points(p.points, self.size), p.labels) for p in prompts])
                for view, embedding in self.views]
        restored = [[view.restore(m.logits) for m in run] for (view, _), run in zip(self.views, runs)]
        return [MaskPatch(0, 0, np.mean([r[i] for r in restored], axis=0), float(np.mean([run[i].score for run in runs])))
                for i in range(len(prompts))]


def teacher_masks(masks_of: Callable[[List[Prompt]], List[MaskPatch]], prompts: List[Prompt],
                  positives: List[np.ndarray], targets: np.ndarray, opts: SelfTrainOptions, scale: float,
                  known: Optional[List[MaskPatch]] = None) -> Tuple[List[MaskPatch], Dict[int, List[int]]]:
    """Pseudo-label masks (decoder resolution) of every prompt, the ``targets`` calibrated against their neighbours.

    ``masks_of``: the teacher (:meth:`TeacherViews.masks`). ``known``: masks already decoded for these
    prompts; only the targets' (whose prompts changed) are decoded again."""
    patches = list(known) if known is not None else [None] * len(prompts)
    todo = [i for i in range(len(prompts)) if patches[i] is None or i in set(targets.tolist())]
    for i, patch in zip(todo, masks_of([prompts[i] for i in todo])):
        patches[i] = patch
    if not opts.calibration:
        return patches, {}
    low_res_clicks = [p / scale for p in positives]  # masks are at 1/scale of the chip
    neighbours = find_neighbours(patches, low_res_clicks, targets.tolist(), opts.calibration_iou)
    if neighbours:
        again = [with_negatives(prompts[i], np.vstack([positives[j] for j in js])) for i, js in neighbours.items()]
        for i, patch in zip(neighbours, masks_of(again)):
            patches[i] = patch
    return patches, neighbours


def selftrain_step(sam, chip: TrainingChip, opts: SelfTrainOptions, rng: np.random.Generator,
                   regularizer: Optional[PrototypeRegularizer] = None) -> StepResult:
    """The loss of one chip; call ``backward`` on ``result.loss``."""
    size = chip.image.shape[0]
    view = random_dihedral(rng)
    image = view.image(chip.image)
    positives = [view.points(p, size) for p in chip.positives]
    user_negatives = [view.points(n, size) for n in chip.negatives]
    trained = rng.permutation(chip.owned)[:opts.max_objects]
    first = [Prompt(np.vstack([p, n]), np.r_[np.ones(len(p)), np.zeros(len(n))].astype(int))
             for p, n in zip(positives, user_negatives)]
    neighbours: dict = {}
    with torch.no_grad():
        teacher = TeacherViews(sam, image, 1 if opts.supervised else opts.teacher_views)
        teacher_embedding = teacher.embedding
        scale = size / teacher_embedding.shape[-1] / 4  # decoder masks are 4x the embedding grid
        if opts.supervised:
            truth = [view.image(t) for t in chip.truth]
            covered = np.any(truth, axis=0)
        else:
            known = teacher.masks(first)
            covered = _union(known, size)
        prompts = list(first)
        for i in trained:
            extra = background_negatives(positives, size, opts.background, 0.05 * size, rng, exclude=covered)
            prompts[i] = with_negatives(first[i], extra)
        if opts.supervised:
            pseudo = torch.from_numpy(np.stack([truth[i] for i in trained]))
        else:
            patches, neighbours = teacher_masks(teacher.masks, prompts, positives, trained, opts, scale, known)
            pseudo = torch.from_numpy(np.stack([patches[i].logits > 0 for i in trained]))
    student_image = strong_view(image, rng) if opts.strong else image
    student_embedding = embed(sam, student_image)
    pseudo = pseudo.to(student_embedding.device)
    decoded = decode_groups(sam, student_embedding, [prompts[i] for i in trained])  # for pseudo-labels and anchor
    terms = mask_terms(decoded, pseudo, focal_alpha=FOCAL_ALPHA)
    loss = terms.total().mean()
    mean = lambda t: float(t.detach().mean())  # noqa: E731
    logged = {"focal": mean(terms.focal), "dice": mean(terms.dice), "iou_mse": mean(terms.iou_mse),
              "agreement": float(terms.iou.mean()), "calibrated": float(len(neighbours)), "objects": float(len(trained))}
    if opts.anchor_weight > 0 and not opts.supervised:  # the truth needs no anchor
        anchor = base_masks(sam, image, [prompts[i] for i in trained]).to(student_embedding.device)
        anchor_terms = mask_terms(decoded, anchor, focal_alpha=FOCAL_ALPHA)
        anchor_loss = (20 * anchor_terms.focal + anchor_terms.dice).mean()  # the IoU head learns the teacher's
        loss = loss + opts.anchor_weight * anchor_loss
        logged["anchor"] = float(anchor_loss.detach())
    teacher_features = None
    if opts.prototypes and regularizer is not None:
        teacher_features = instance_features(teacher_embedding, pseudo)
        proto = regularizer.loss(instance_features(student_embedding, pseudo))
        loss = loss + opts.prototype_weight * proto
        logged["prototype"] = float(proto.detach())
    logged["loss"] = float(loss.detach())
    return StepResult(loss, logged, teacher_features)


def base_masks(sam, image: np.ndarray, prompts: List[Prompt]) -> torch.Tensor:
    """(N, h, w) bool: the base model's masks (adapters off) for ``prompts`` on the (weak-view) ``image``."""
    with torch.no_grad(), base_model(sam):
        return torch.from_numpy(np.stack([p.logits > 0 for p in kept_masks(sam, embed(sam, image), prompts)]))


def _union(patches: List[MaskPatch], size: int) -> np.ndarray:
    """(size, size) bool: pixels inside any decoder-resolution mask."""
    low = np.zeros(patches[0].shape, dtype=bool)
    for p in patches:
        low |= p.logits > 0
    factor = size // low.shape[0]
    return np.kron(low, np.ones((factor, factor), dtype=bool))
