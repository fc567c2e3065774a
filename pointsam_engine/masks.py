"""Prompts and masks as plain numpy values, shared by prediction, calibration and vectorizing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

MASK_THRESHOLD = 0.0  # SAM's logit threshold
CLICK_LOGIT = 60000.0  # an object's own click pixel: above any logit SAM gives, so no neighbour can take it


@dataclass
class Prompt:
    """Clicks for one object. ``points``: (N, 2) x, y chip pixels; ``labels``: (N,) 1 positive, 0 negative;
    ``box``: an optional box prompt ``[xmin, ymin, xmax, ymax]`` in chip pixels (edges, not centres)."""

    points: np.ndarray
    labels: np.ndarray
    box: Optional[np.ndarray] = None


@dataclass
class MaskPatch:
    """An object's mask logits on a window of a pixel grid: rows ``row0..``, cols ``col0..``."""

    row0: int
    col0: int
    logits: np.ndarray  # (H, W) float32
    score: float  # predicted IoU

    @property
    def mask(self) -> np.ndarray:
        return self.logits > MASK_THRESHOLD

    @property
    def shape(self):
        return self.logits.shape

    def shifted(self, rows: int, cols: int) -> "MaskPatch":
        return MaskPatch(self.row0 + rows, self.col0 + cols, self.logits, self.score)

    def cropped(self, margin: int = 0) -> "MaskPatch":
        """The same patch cut to the bounding box of its mask, grown by ``margin`` pixels where the patch
        has them (empty: a 0x0 patch)."""
        mask = self.mask
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        if len(rows) == 0:
            return MaskPatch(self.row0, self.col0, np.zeros((0, 0), np.float32), self.score)
        r0, r1 = max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, mask.shape[0])
        c0, c1 = max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, mask.shape[1])
        return MaskPatch(self.row0 + int(r0), self.col0 + int(c0), self.logits[r0:r1, c0:c1], self.score)
