"""SAM's mask objective on point prompts, shared by pre-training (truth targets) and self-training (pseudo-labels).

Prompts with the same number of clicks are decoded as one batch. A single positive click gets SAM's
three masks and the loss keeps the best of them (as SAM is trained; the engine keeps the one its IoU
head ranks first); other prompts get one mask. Losses are taken at the decoder's own resolution
(a quarter of the input), against targets pooled to it: much cheaper than at full size.
"""

from __future__ import annotations

from itertools import groupby
from typing import List, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .losses import dice_loss, focal_loss, mask_iou


class MaskTerms(NamedTuple):
    """Per object: loss terms (best of SAM's masks for a single click) and the IoU the engine would get."""

    focal: torch.Tensor  # (N,)
    dice: torch.Tensor  # (N,)
    iou_mse: torch.Tensor  # (N,)
    iou: torch.Tensor  # (N,) IoU of the mask the engine keeps (ranked first by the IoU head), no gradient

    def total(self, focal_weight: float = 20.0) -> torch.Tensor:
        return focal_weight * self.focal + self.dice + self.iou_mse


def decode(sam, embedding: torch.Tensor, points: np.ndarray, labels: np.ndarray):
    """Low-resolution logits and predicted IoUs for prompts with equal click counts: (n, k, h, w), (n, k)."""
    device = embedding.device
    coords = torch.as_tensor(points - 0.5, dtype=torch.float32, device=device)  # pixel centres -> SAM's corners
    sparse, dense = sam.prompt_encoder(points=(coords, torch.as_tensor(labels, dtype=torch.int, device=device)),
                                       boxes=None, masks=None)
    low, iou_pred = sam.mask_decoder.predict_masks(embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense)
    multimask = points.shape[1] == 1 and bool((labels == 1).all())
    keep = slice(1, 4) if multimask else slice(0, 1)  # what the engine reads for this kind of prompt
    return low[:, keep], iou_pred[:, keep]


def decode_groups(sam, embedding: torch.Tensor, points: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> list:
    """Prompts grouped by click count, each group decoded once: ``[(indices, logits, predicted IoUs), ...]``.

    Pass the result to :func:`mask_terms` to score the same decoding against several targets."""
    order = sorted(range(len(points)), key=lambda i: len(points[i]))
    decoded = []
    for _, group in groupby(order, key=lambda i: len(points[i])):
        group = list(group)
        logits, pred_iou = decode(sam, embedding, np.stack([points[i] for i in group]), np.stack([labels[i] for i in group]))
        decoded.append((group, logits, pred_iou))
    return decoded


def mask_terms(sam, embedding: torch.Tensor, points: Sequence[np.ndarray], labels: Sequence[np.ndarray],
               targets: torch.Tensor, focal_alpha: float = 0.25, decoded: Optional[list] = None) -> MaskTerms:
    """SAM's losses for each prompt against ``targets`` (N, H, W) in {0, 1} (or area fractions).

    ``decoded``: :func:`decode_groups` of these prompts, when another target already decoded them."""
    decoded = decode_groups(sam, embedding, points, labels) if decoded is None else decoded
    parts: List[tuple] = []
    for group, logits, pred_iou in decoded:
        t = F.adaptive_avg_pool2d(targets[group][:, None].float(), logits.shape[-2:]).expand_as(logits)
        focal, dice = focal_loss(logits, t, alpha=focal_alpha), dice_loss(logits, t)
        best = (20 * focal + dice).argmin(dim=1, keepdim=True)
        actual = mask_iou(logits, t)
        pick = lambda x: x.gather(1, best).squeeze(1)  # noqa: E731
        iou_mse = F.mse_loss(pred_iou, actual, reduction="none").mean(dim=1)  # the IoU head learns all k masks
        engine_iou = actual.gather(1, pred_iou.argmax(dim=1, keepdim=True)).squeeze(1)
        parts.append((group, pick(focal), pick(dice), iou_mse, engine_iou))
    inverse = np.argsort(np.concatenate([p[0] for p in parts]))
    cat = lambda k: torch.cat([p[k] for p in parts])[torch.as_tensor(inverse, device=embedding.device)]  # noqa: E731
    return MaskTerms(cat(1), cat(2), cat(3), cat(4))
