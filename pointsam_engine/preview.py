"""A PNG a person can look at: the image (stretched as the engine saw it) with polygons and boxes drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, ImageDraw
from rasterio.enums import Resampling

from .raster import Raster, apply_affine, compute_normalization, to_amplitude

MAX_SIDE = 1024


def render_preview(raster, layers: dict, png, *, sar_db: bool = False, max_side: int = MAX_SIDE) -> Path:
    """Draw ``instances`` (outlined, tinted) and ``boxes`` (thin lines) of a run over its raster."""
    with Raster(raster) as ras:
        norm = compute_normalization(ras, (2, 98), sar_db)
        scale = max(ras.width, ras.height) / max_side if max(ras.width, ras.height) > max_side else 1.0
        shape = (int(round(ras.height / scale)), int(round(ras.width / scale)))
        with rasterio.open(raster) as src:
            raw = src.read(list(dict.fromkeys(ras.bands)), out_shape=(len(set(ras.bands)), *shape),
                           resampling=Resampling.average)
        unique = list(dict.fromkeys(ras.bands))
        raw = raw[[unique.index(b) for b in ras.bands]]
        image = Image.fromarray(norm.apply(to_amplitude(raw, sar_db))).convert("RGBA")
        inverse = ~ras.transform
        crs = ras.crs
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)

    def pixels(coords):
        cols, rows = apply_affine(inverse, coords[:, 0], coords[:, 1])
        return list(zip((cols / scale).tolist(), (rows / scale).tolist()))

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
    png = Path(png)
    Image.alpha_composite(image, overlay).convert("RGB").save(png)
    return png
