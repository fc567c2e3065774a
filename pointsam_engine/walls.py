"""Which way each object's walls run, as the imagery shows them (for ``--regularize buildings``).

A leaky mask's outline can run tens of degrees off the building's walls: its best rectangle and its edges
follow the leak. The roof's edges in the image do not. In a band of :data:`BAND_PX` pixels either side of
the mask's outline, the image's gradients are turned into ground directions (pixels need not be square on the
ground: degree pixels are not, away from the equator) and averaged modulo 90° (four times each angle, weighted by
the squared gradient: a structure-tensor estimate in which a rectangle's two wall directions add up instead of
cancelling). Where they agree less than :data:`MIN_AGREEMENT` the image gives no direction (noise alone agrees
up to about 0.1 around a roof-sized outline). The direction comes back as a short segment in map coordinates,
so it is carried into any frame the outlines are worked in.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import shapely
from rasterio.features import rasterize
from scipy import ndimage
from shapely import affinity

from .measure import Measurer
from .raster import Normalization, Raster, apply_affine
from .vectorize import to_map

BAND_PX = 3  # the band either side of the outline whose gradients count
SMOOTH_PX = 1.0  # the image is smoothed this much (Gaussian sigma, pixels) before its gradient is taken
MIN_AGREEMENT = 0.15  # |mean of the gradients' e^(4i angle)|, weighted, below which the image gives no direction
MAX_WINDOW_PX = 512  # a larger object is read at every n-th pixel: at most this many pixels a side


def wall_directions(ras: Raster, norm: Normalization, traced: Sequence) -> np.ndarray:
    """Per object (a polygon in working-grid pixels, or None), a segment in map coordinates from its centroid along
    the direction its walls run on the ground, modulo 90° (None where there is no outline or the image around it
    shows no one direction)."""
    traced = np.asarray(traced, dtype=object)
    out = np.full(len(traced), None, dtype=object)
    live = np.flatnonzero([p is not None and not p.is_empty for p in traced])
    if not len(live):
        return out
    centres = shapely.get_coordinates(shapely.centroid(traced[live]))
    for k, centre, to_ground in zip(live, centres, _ground_steps(ras, centres)):
        step = _wall_step(ras, norm, traced[k], to_ground)
        if step is not None:
            out[k] = shapely.LineString([centre, centre + step])
    return to_map(out, ras.working_transform)


def _ground_steps(ras: Raster, centres: np.ndarray) -> np.ndarray:
    """Per centre (working-grid pixels), the 2x2 matrix taking a one-pixel step there to metres east and north."""
    a, b, _, d, e, _ = tuple(ras.working_transform)[:6]
    x, y = apply_affine(ras.working_transform, centres[:, 0], centres[:, 1])
    origins = np.column_stack([x, y])
    measurer = Measurer.of(ras.crs)
    columns = [measurer.ground_steps(origins, np.tile(step, (len(origins), 1))) for step in ((a, d), (b, e))]
    return np.stack(columns, axis=2)


def _wall_step(ras: Raster, norm: Normalization, polygon, to_ground: np.ndarray) -> Optional[np.ndarray]:
    """The unit step (working-grid pixels) along which ``polygon``'s walls run on the ground, or None."""
    gx, gy = _band_gradients(ras, norm, polygon)
    if not len(gx):
        return None
    ground = np.linalg.solve(to_ground.T, np.vstack([gx, gy]))  # gradients are normals: they turn by the inverse transpose
    weight = (ground ** 2).sum(axis=0)
    summed = (weight * np.exp(4j * np.arctan2(ground[1], ground[0]))).sum()
    if weight.sum() <= 0 or abs(summed) < MIN_AGREEMENT * weight.sum():
        return None
    angle = np.angle(summed) / 4
    step = np.linalg.solve(to_ground, [np.cos(angle), np.sin(angle)])
    return step / np.hypot(*step)


def _band_gradients(ras: Raster, norm: Normalization, polygon):
    """The image's gradients (x: columns, y: rows) in the band around ``polygon``'s outline, on valid pixels."""
    rows, cols = ras.working_shape
    margin = BAND_PX + 2 + int(np.ceil(2 * SMOOTH_PX))
    x0, y0, x1, y1 = polygon.bounds
    col0, row0 = max(0, int(x0) - margin), max(0, int(y0) - margin)
    height = min(rows, int(np.ceil(y1)) + margin) - row0
    width = min(cols, int(np.ceil(x1)) + margin) - col0
    step = int(np.ceil(max(height, width) / MAX_WINDOW_PX))
    image, valid = ras.read_area(row0, col0, height, width, norm, step)
    gray = ndimage.gaussian_filter(image.astype(np.float32).mean(axis=2), SMOOTH_PX)
    local = affinity.affine_transform(polygon, [1 / step, 0, 0, 1 / step, -col0 / step, -row0 / step])
    inside = rasterize([(local, 1)], out_shape=gray.shape, dtype="uint8").astype(bool)
    band = (ndimage.binary_dilation(inside, iterations=BAND_PX) & ~ndimage.binary_erosion(inside, iterations=BAND_PX)
            & ndimage.binary_erosion(valid, iterations=2))
    return ndimage.sobel(gray, axis=1)[band], ndimage.sobel(gray, axis=0)[band]
