"""SAM's mask losses: focal (gamma 2, alpha 0.25) + Dice on logits, and MSE for the IoU head; pure tensor functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Mean focal loss over the last two dims: (..., H, W) -> (...)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (alpha_t * ce * (1 - p_t) ** gamma).mean(dim=(-2, -1))


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - Dice over the last two dims: (..., H, W) -> (...)."""
    prob = logits.sigmoid()
    inter = (prob * target).sum(dim=(-2, -1))
    return 1 - (2 * inter + smooth) / (prob.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1)) + smooth)


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded logits with the target: (..., H, W) -> (...), no gradient."""
    with torch.no_grad():
        pred = logits > 0
        truth = target > 0.5
        inter = (pred & truth).sum(dim=(-2, -1)).float()
        union = (pred | truth).sum(dim=(-2, -1)).float()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
