"""Rasters cut from one generated scene with rasterio windows: some overlap, some abut (tests and benchmarks)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import rasterio
from rasterio.windows import Window

from pointsam_engine.demo.scenes import generate

# (col0, row0, width, height) of each tile on a 512 scene: a|b overlap by 32 columns, a/c abut, b/d overlap by
# 24 rows, c|d abut
LAYOUT = ((0, 0, 288, 256), (256, 0, 256, 280), (0, 256, 256, 256), (256, 256, 256, 256))


def cut(raster, folder, windows: Sequence[Tuple[int, int, int, int]] = LAYOUT, prefix: str = "tile") -> List[Path]:
    """Write each window of ``raster`` as its own GeoTIFF in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    with rasterio.open(raster) as src:
        for k, (col0, row0, width, height) in enumerate(windows):
            window = Window(col0, row0, width, height)
            profile = {**src.profile, "width": width, "height": height, "transform": src.window_transform(window)}
            path = folder / f"{prefix}{k}.tif"
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(src.read(window=window))
            out.append(path)
    return out


def survey(folder, size: int = 512, seed: int = 3, windows=LAYOUT, **options) -> Dict[str, object]:
    """A buildings scene of ``size`` pixels cut into tiles: ``{"points", "truth", "scene", "tiles"}``."""
    folder = Path(folder)
    files = generate("buildings", folder / "scene", size=size, seed=seed, **options)
    tiles = cut(files["raster"], folder / "tiles", windows)
    return {"points": files["points"], "truth": files["truth"], "scene": files["raster"], "tiles": tiles}
