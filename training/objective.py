"""SAM's mask objective on point prompts, shared by pre-training (truth targets) and self-training (pseudo-labels).

Prompts are decoded by the engine's own :mod:`pointsam_engine.sam.decode`, so training scores exactly
the masks the engine reads: a single positive click gets SAM's three masks and the loss keeps the best of
them (as SAM is trained; the engine keeps the one its IoU head ranks first); other prompts get one mask.
Losses are taken at the decoder's own resolution (a quarter of the input), against targets pooled to it:
much cheaper than at full size.
"""

from __future__ import annotations

from typing import List, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pointsam_engine.sam.decode import Decoded

from .losses import dice_loss, focal_loss, mask_iou


class MaskTerms(NamedTuple):
    """Per object: loss terms (best of SAM's masks for a single click) and the IoU the engine would get."""

    focal: torch.Tensor  # (N,)
    dice: torch.Tensor  # (N,)
    iou_mse: torch.Tensor  # (N,)
    iou: torch.Tensor  # (N,) IoU of the mask the engine keeps (ranked first by the IoU head), no gradient

    def total(self, focal_weight: float = 20.0) -> torch.Tensor:
        return focal_weight * self.focal + self.dice + self.iou_mse


def mask_terms(decoded: Sequence[Decoded], targets: torch.Tensor, focal_alpha: float = 0.25) -> MaskTerms:
    """SAM's losses for each prompt against ``targets`` (N, H, W) in {0, 1} (or area fractions), in prompt order.

    ``decoded``: :func:`~pointsam_engine.sam.decode.decode_groups` of the N prompts (one decoding serves
    several targets)."""
    parts: List[tuple] = []
    for batch in decoded:
        logits, pred_iou = batch.logits, batch.iou
        t = F.adaptive_avg_pool2d(targets[batch.indices][:, None].float(), logits.shape[-2:]).expand_as(logits)
        focal, dice = focal_loss(logits, t, alpha=focal_alpha), dice_loss(logits, t)
        best = (20 * focal + dice).argmin(dim=1, keepdim=True)
        actual = mask_iou(logits, t)
        pick = lambda x: x.gather(1, best).squeeze(1)  # noqa: E731
        iou_mse = F.mse_loss(pred_iou, actual, reduction="none").mean(dim=1)  # the IoU head learns all k masks
        engine_iou = actual.gather(1, batch.kept()[:, None]).squeeze(1)
        parts.append((batch.indices, pick(focal), pick(dice), iou_mse, engine_iou))
    inverse = torch.as_tensor(np.argsort(np.concatenate([p[0] for p in parts])), device=decoded[0].logits.device)
    cat = lambda k: torch.cat([p[k] for p in parts])[inverse]  # noqa: E731
    return MaskTerms(cat(1), cat(2), cat(3), cat(4))
