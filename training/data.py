"""Training samples from generated scenes: 8-bit chips (stretched as the engine stretches), truth masks
and click prompts, with the 8 flips/transposes as augmentation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np
from scipy import ndimage

from pointsam_engine.config import SegmentConfig
from pointsam_engine.demo.scenes import Scene, render
from pointsam_engine.raster import normalization_from_sample, to_amplitude

DENSE = 1.6  # buildings density of "dense" scenes: 60 % of the rows are terraces


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) uint8
    masks: np.ndarray  # (K, H, W) bool
    points: List[np.ndarray]  # per object (n, 2) x, y pixel centres
    labels: List[np.ndarray]  # per object (n,) 1 positive, 0 negative


def to_uint8(scene: Scene, sar_db: bool) -> np.ndarray:
    """The scene's image as the engine's default stretch (2-98 percentiles) makes it."""
    bands = scene.image if scene.image.shape[0] == 3 else np.repeat(scene.image, 3, axis=0)
    values = to_amplitude(bands, sar_db)
    flat = values.reshape(3, -1)
    norm = normalization_from_sample(flat, np.isfinite(flat).all(axis=0), SegmentConfig.stretch, sar_db)
    return norm.apply(values)


class ScenePool:
    """A fixed set of rendered scenes (by seed) to crop training chips from."""

    def __init__(self, kinds, per_kind: int, size: int, seed: int, dense_share: float = 0.0):
        """``dense_share``: the share of buildings scenes drawn at :data:`DENSE` density, with terraces."""
        self.items, self.kinds = [], []
        for k, kind in enumerate(kinds):
            dense = round(dense_share * per_kind) if kind == "buildings" else 0
            for i in range(per_kind):
                density = DENSE if i < dense else 1.0
                scene = render(kind, size, seed=seed * 1000 + k * 100 + i, density=density)
                stretches = [False, True] if kind == "ships" else [False]  # ships also in dB, as --sar-db gives
                for sar_db in stretches:
                    self.items.append((to_uint8(scene, sar_db), scene.labels, scene.clicks))
                    self.kinds.append(kind)

    def sample(self, rng: np.random.Generator, chip: int, max_objects: int, share: dict | None = None) -> Sample:
        """A random chip with up to ``max_objects`` objects, each with its prompt.

        ``share``: probability of each kind (e.g. ``{"ships": 0.7, "buildings": 0.3}``); None: every
        rendered image equally likely."""
        for _ in range(50):
            image, labels, clicks = self.items[self._pick(rng, share)]
            r0, c0 = rng.integers(0, image.shape[0] - chip + 1), rng.integers(0, image.shape[1] - chip + 1)
            img, lab = image[r0:r0 + chip, c0:c0 + chip], labels[r0:r0 + chip, c0:c0 + chip]
            whole = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)
            sample = prompts_for(img, lab, whole, clicks - (c0, r0), rng, max_objects)
            if sample is not None:
                return augment(sample, rng)
        raise RuntimeError("no scene chip with objects found; scenes are empty")


    def _pick(self, rng, share) -> int:
        if share is None:
            return int(rng.integers(len(self.items)))
        kinds = sorted(share)
        kind = kinds[rng.choice(len(kinds), p=np.array([share[k] for k in kinds]) / sum(share.values()))]
        return int(rng.choice([i for i, k in enumerate(self.kinds) if k == kind]))


def prompts_for(img, lab, whole, clicks, rng, max_objects) -> Sample | None:
    """A sample of the chip ``img`` with instance labels ``lab``: up to ``max_objects`` objects that show at
    least 60 % of their whole area (``whole``: pixels per label id in the full image, at the chip's scale),
    each with its click (``clicks[id - 1]``, x, y on the chip), sometimes a second click, sometimes its
    touching neighbours' clicks as negatives; None when no object qualifies."""
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    ids = [i for i, n in zip(ids, counts) if n >= 16 and n >= 0.6 * whole[i]]
    if not ids:
        return None
    ids = rng.permutation(ids)[:max_objects]
    chip = lab.shape[0]
    masks, points, labels = [], [], []
    for i in ids:
        mask = lab == i
        pos = _click_for(mask, clicks[i - 1], rng)
        pts, lbl = [pos], [1]
        if rng.random() < 0.1:  # a second positive click
            pts.append(_interior_pixel(mask, rng))
            lbl.append(1)
        if rng.random() < 0.3:  # neighbours' clicks as negatives, as calibration sends them
            touching = np.unique(lab[ndimage.binary_dilation(mask, iterations=2) & (lab > 0) & ~mask])
            for j in touching:
                cx, cy = clicks[j - 1]
                if 0 <= cx < chip and 0 <= cy < chip and lab[int(cy), int(cx)] == j:
                    pts.append((cx, cy))
                    lbl.append(0)
        masks.append(mask)
        points.append(np.array(pts, float))
        labels.append(np.array(lbl, int))
    return Sample(img, np.stack(masks), points, labels)


def _click_for(mask, scene_click, rng):
    x, y = scene_click
    if 0 <= x < mask.shape[1] and 0 <= y < mask.shape[0] and mask[int(y), int(x)]:
        return (float(x), float(y))
    return _interior_pixel(mask, rng)


def _interior_pixel(mask, rng):
    inner = ndimage.binary_erosion(mask, iterations=2)
    rows, cols = np.nonzero(inner if inner.any() else mask)
    k = rng.integers(len(rows))
    return (cols[k] + rng.uniform(0.2, 0.8), rows[k] + rng.uniform(0.2, 0.8))


def augment(s: Sample, rng) -> Sample:
    """One of the 8 flips/transposes of a sample, image, masks and clicks together."""
    img, masks, points = s.image, s.masks, [p.copy() for p in s.points]
    size = img.shape[0]
    if rng.random() < 0.5:
        img, masks = img.transpose(1, 0, 2), masks.transpose(0, 2, 1)
        points = [p[:, ::-1].copy() for p in points]
    if rng.random() < 0.5:
        img, masks = img[:, ::-1], masks[:, :, ::-1]
        for p in points:
            p[:, 0] = size - p[:, 0]
    if rng.random() < 0.5:
        img, masks = img[::-1], masks[:, ::-1]
        for p in points:
            p[:, 1] = size - p[:, 1]
    return Sample(np.ascontiguousarray(img), np.ascontiguousarray(masks), points, s.labels)
