"""Prompts and masks as plain numpy values, shared by prediction, calibration and vectorizing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

MASK_THRESHOLD = 0.0  # SAM's logit threshold
CLICK_LOGIT = 60000.0  # an object's own click pixel: above any logit SAM gives, so no neighbour can take it
_HALF_INF = np.array(np.inf, np.float16).view(np.int16)  # +inf's bits: signed bits above it are NaNs


def positive(logits: np.ndarray) -> np.ndarray:
    """``logits > MASK_THRESHOLD`` (0). Held logits are float16, which numpy compares without SIMD (about
    20x slower than float32 on a 1024² chip), so those are read as int16: a float16 is above 0 exactly when
    its bits, read as a signed integer, are (sign bit clear, not zero) and are not a NaN's."""
    if logits.dtype != np.float16:
        return logits > MASK_THRESHOLD
    bits = logits.view(np.int16)
    return (bits > 0) & (bits <= _HALF_INF)


def as_half(logits: np.ndarray) -> np.ndarray:
    """``logits`` as a new float16 array, the form masks are held in: ``logits.astype(np.float16)``, bit for bit.
    Float32 logits are cast by torch: numpy's float32 -> float16 cast is not vectorized (about ten times slower
    on a chip's mask); both round to nearest even."""
    logits = np.asarray(logits)
    if logits.dtype != np.float32 or not logits.dtype.isnative or not logits.flags.writeable \
            or min(logits.strides, default=0) < 0:  # what torch does not take as it is (float64 it would round twice)
        return logits.astype(np.float16)
    import torch  # here: the engine's command line reads this module without loading torch

    return torch.from_numpy(logits).to(torch.float16).numpy()


def signed_by(logits: np.ndarray, keep: np.ndarray, margin: float = 1e-3) -> np.ndarray:
    """The logits with their sign set by ``keep``: at least ``margin`` where it is True, at most ``-margin``
    elsewhere (``np.where(keep, max(logits, margin), min(logits, -margin))``), as float16. Computed on the
    float16 bits (see :func:`positive`): a magnitude below ``margin`` is a smaller unsigned 15-bit value. A NaN
    (never a logit) becomes ``margin`` where kept."""
    keep = np.asarray(keep, dtype=bool)
    out = logits.astype(np.float16)  # a copy, rounded first: rounding keeps the order, so the result is the same
    bits = out.view(np.int16)
    small = (bits & 0x7FFF) < np.array(margin, np.float16).view(np.int16)
    above = positive(out)
    out[keep & (small | ~above)] = margin
    out[~keep & (small | above)] = -margin
    return out


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
        return positive(self.logits)

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
