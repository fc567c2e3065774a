"""Which way each object's walls run, as the imagery shows them (for ``--regularize buildings``).

A leaky mask's outline can run tens of degrees off the building's walls: its best rectangle and its edges
follow the leak. The roof's edges in the image do not. In a band of :data:`BAND_PX` pixels either side of
the mask's outline, the image's gradient directions are averaged modulo 90° (four times each angle, weighted
by the squared gradient: a structure-tensor estimate in which a rectangle's two wall directions add up
instead of cancelling). The direction comes back as a short segment, so it is carried into any CRS and
frame the outlines are, and a right angle on the ground stays one.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import shapely
from rasterio.features import rasterize
from scipy import ndimage
from shapely import affinity

from .raster import Normalization, Raster

BAND_PX = 3  # the band either side of the outline whose gradients count
SMOOTH_PX = 1.0  # the image is smoothed this much (Gaussian sigma, pixels) before its gradient is taken


def wall_directions(ras: Raster, norm: Normalization, traced: Sequence) -> np.ndarray:
    """Per object (a polygon in working-grid pixels, or None), a one-pixel segment from its centroid along the
    direction its walls run in the image, modulo 90° (working-grid pixels; None where there is no outline or the
    image is flat around it)."""
    out = np.full(len(traced), None, dtype=object)
    for k, polygon in enumerate(traced):
        if polygon is None or polygon.is_empty:
            continue
        angle = _image_angle(ras, norm, polygon)
        if angle is not None:
            x, y = polygon.centroid.coords[0]
            out[k] = shapely.LineString([(x, y), (x + np.cos(angle), y + np.sin(angle))])
    return out


def direction_of(segment) -> float:
    """The direction (degrees, modulo 90) of a segment in its own coordinates."""
    (x0, y0), (x1, y1) = np.asarray(segment.coords)[:2]
    return float(np.degrees(np.arctan2(y1 - y0, x1 - x0)) % 90)


def _image_angle(ras: Raster, norm: Normalization, polygon):
    """The gradient direction (radians, modulo π/2, working-grid pixel axes) in the band around ``polygon``'s
    outline, or None."""
    rows, cols = ras.working_shape
    margin = BAND_PX + 2 + int(np.ceil(2 * SMOOTH_PX))
    x0, y0, x1, y1 = polygon.bounds
    col0, row0 = max(0, int(x0) - margin), max(0, int(y0) - margin)
    size = max(min(cols, int(np.ceil(x1)) + margin) - col0, min(rows, int(np.ceil(y1)) + margin) - row0)
    image, valid = ras.read_chip(row0, col0, size, norm)
    gray = ndimage.gaussian_filter(image.astype(np.float32).mean(axis=2), SMOOTH_PX)
    inside = rasterize([(affinity.translate(polygon, -col0, -row0), 1)], out_shape=gray.shape,
                       dtype="uint8").astype(bool)
    band = (ndimage.binary_dilation(inside, iterations=BAND_PX) & ~ndimage.binary_erosion(inside, iterations=BAND_PX)
            & ndimage.binary_erosion(valid, iterations=2))
    gx, gy = ndimage.sobel(gray, axis=1)[band], ndimage.sobel(gray, axis=0)[band]
    weight = gx ** 2 + gy ** 2
    if not len(weight) or weight.sum() <= 0:
        return None
    return float(np.angle((weight * np.exp(4j * np.arctan2(gy, gx))).sum()) / 4)
