"""The two views of self-training: a weak geometric view for the teacher, a strong photometric one for the student.

Weak: one of the 8 flips/quarter turns of the square chip, applied to the image and to every click alike.
Strong: on top of the weak image (same geometry, so the teacher's masks supervise the student pixel for
pixel), PointSAM's photometric chain, each step with probability 0.5: posterize, equalize, sharpen,
solarize, brightness/contrast and a random shadow. Built on Pillow's ImageOps/ImageEnhance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps


@dataclass(frozen=True)
class Dihedral:
    """One of the 8 symmetries of a square: optional transpose, then optional flips of columns and rows."""

    transpose: bool
    flip_x: bool
    flip_y: bool

    def image(self, a: np.ndarray) -> np.ndarray:
        """(H, W, ...) array in the weak view."""
        if self.transpose:
            a = a.swapaxes(0, 1)
        if self.flip_x:
            a = a[:, ::-1]
        if self.flip_y:
            a = a[::-1]
        return np.ascontiguousarray(a)

    def points(self, xy: np.ndarray, size: int) -> np.ndarray:
        """(N, 2) x, y pixel coordinates (pixel centres at i + 0.5) in the weak view."""
        xy = np.asarray(xy, float).reshape(-1, 2)
        if self.transpose:
            xy = xy[:, ::-1]
        xy = xy.copy()
        if self.flip_x:
            xy[:, 0] = size - xy[:, 0]
        if self.flip_y:
            xy[:, 1] = size - xy[:, 1]
        return xy

    def restore(self, a: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`image`: an (H, W, ...) array of the view back in the chip's geometry."""
        if self.flip_y:
            a = a[::-1]
        if self.flip_x:
            a = a[:, ::-1]
        if self.transpose:
            a = a.swapaxes(0, 1)
        return np.ascontiguousarray(a)


IDENTITY = Dihedral(False, False, False)
# the teacher's extra views, most different first: half turn, the two diagonal mirrors, quarter turns, flips
SPREAD_VIEWS = (IDENTITY, Dihedral(False, True, True), Dihedral(True, False, False), Dihedral(True, True, True),
                Dihedral(True, True, False), Dihedral(True, False, True), Dihedral(False, True, False),
                Dihedral(False, False, True))


def random_dihedral(rng: np.random.Generator) -> Dihedral:
    return Dihedral(*(bool(b) for b in rng.integers(0, 2, 3)))


def strong_view(image: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """PointSAM's photometric chain on an (H, W, 3) uint8 image; geometry unchanged."""
    img = Image.fromarray(image)
    if rng.random() < p:
        img = ImageOps.posterize(img, int(rng.integers(4, 9)))
    if rng.random() < p:
        img = ImageOps.equalize(img)
    if rng.random() < p:
        img = img.filter(ImageFilter.UnsharpMask(radius=2, percent=int(rng.integers(50, 200)), threshold=0))
    if rng.random() < p:
        img = ImageOps.solarize(img, int(rng.integers(128, 256)))
    if rng.random() < p:
        img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.8, 1.2)))
        img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.8, 1.2)))
    if rng.random() < p:
        img = _shadow(img, rng)
    return np.array(img)  # writable, for torch.from_numpy


def _shadow(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Darken a random quadrilateral (a cloud or building shadow) by 30-70 %."""
    w, h = img.size
    corners = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(4)]
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).polygon(corners, fill=255)
    dark = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.3, 0.7)))
    return Image.composite(dark, img, mask)
