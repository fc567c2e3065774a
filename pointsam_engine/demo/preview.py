"""A PNG a person can look at: the image as the engine saw it, with the run's polygons and boxes drawn over it.

"As the engine saw it" means the run's own :class:`~pointsam_engine.raster.Normalization` (its bands, stretch,
nodata and SAR dB choice, recorded in the run report as ``stretch``), never a stretch computed again here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import rasterio
from PIL import Image, ImageDraw
from rasterio.enums import Resampling

from ..output import atomic_path
from ..raster import Normalization, Raster, apply_affine, to_amplitude

MAX_SIDE = 1024


def render_preview(raster, layers: dict, png, normalization: Normalization, *, assume_crs: Optional[str] = None,
                   max_side: int = MAX_SIDE) -> Path:
    """Draw ``instances`` (outlined, tinted), ``boxes`` (thin lines) and ``skipped`` clicks (crosses) of a run
    over ``raster`` read through ``normalization``, the run's (``Normalization(**result.report["stretch"])``).
    ``assume_crs``: the run's ``--assume-crs``, for a raster that carries no CRS."""
    norm = normalization
    with Raster(raster, bands=tuple(norm.bands), nodata=norm.nodata, assume_crs=assume_crs) as ras:
        scale = max(ras.width, ras.height) / max_side if max(ras.width, ras.height) > max_side else 1.0
        shape = (int(round(ras.height / scale)), int(round(ras.width / scale)))
        image = Image.fromarray(norm.apply(to_amplitude(_read_bands(raster, ras.bands, shape), norm.sar_db)))
        inverse, crs = ~ras.transform, ras.crs
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    _draw_layers(ImageDraw.Draw(overlay), layers, crs, lambda coords: _pixels(inverse, scale, coords))
    png = Path(png)
    with atomic_path(png, ".png") as tmp:
        Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB").save(tmp, format="PNG")
    return png


def _read_bands(raster, bands, shape) -> np.ndarray:
    """The ``bands`` (1-based, repeats allowed) of the whole raster, averaged down to ``shape`` (rows, cols)."""
    unique = list(dict.fromkeys(bands))
    with rasterio.open(raster) as src:
        raw = src.read(unique, out_shape=(len(unique), *shape), resampling=Resampling.average)
    return raw[[unique.index(b) for b in bands]]


def _pixels(inverse, scale: float, coords: np.ndarray) -> list:
    cols, rows = apply_affine(inverse, coords[:, 0], coords[:, 1])
    return list(zip((cols / scale).tolist(), (rows / scale).tolist()))


def _draw_layers(draw: ImageDraw.ImageDraw, layers: dict, crs, pixels) -> None:
    for geom in layers["instances"].to_crs(crs).geometry:
        for part in getattr(geom, "geoms", [geom]):
            draw.polygon(pixels(np.asarray(part.exterior.coords)), fill=(255, 210, 0, 70), outline=(255, 210, 0, 255))
    for geom in layers["boxes"].to_crs(crs).geometry:
        draw.line(pixels(np.asarray(geom.exterior.coords)), fill=(0, 220, 255, 255), width=1)
    if len(layers.get("skipped", [])):
        for point in layers["skipped"].to_crs(crs).geometry:
            (x, y), = pixels(np.array([[point.x, point.y]]))
            draw.line([(x - 4, y - 4), (x + 4, y + 4)], fill=(255, 40, 40, 255), width=2)
            draw.line([(x - 4, y + 4), (x + 4, y - 4)], fill=(255, 40, 40, 255), width=2)
