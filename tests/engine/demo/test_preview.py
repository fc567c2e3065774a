"""The preview shows the pixels the engine saw: the run's bands, stretch, nodata and dB, never 2-98 again."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from PIL import Image

from pointsam_engine import segment
from pointsam_engine.demo.preview import render_preview
from pointsam_engine.output import TEMP_MARK
from pointsam_engine.raster import Normalization, to_amplitude
from tests.conftest import SquarePredictor, pixel_centres, write_points, write_raster

CRS = "EPSG:32633"


@pytest.fixture
def four_bands(tmp_path):
    """A 64x80 uint16 raster whose four bands differ (band b holds b * 1000 plus a ramp and a few outliers)."""
    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.arange(64), np.arange(80)).astype(np.uint16) * 20
    data = np.stack([ramp + 1000 * b + rng.integers(0, 50, ramp.shape, dtype=np.uint16) for b in range(1, 5)])
    data[:, :2, :2] = 60000  # outliers: a min-max stretch and a 2-98 stretch differ
    raster = write_raster(tmp_path / "r.tif", data)
    with rasterio.open(raster) as src:
        xy = pixel_centres(src.transform, [(30, 40)])
    return raster, write_points(tmp_path / "p.gpkg", xy)


def _empty_layers():
    empty = gpd.GeoDataFrame(geometry=gpd.GeoSeries([], crs=CRS))
    return {"instances": empty, "boxes": empty, "skipped": empty}


def _seen_by_the_engine(raster, norm: Normalization) -> np.ndarray:
    with rasterio.open(raster) as src:
        raw = src.read(list(norm.bands))
    return norm.apply(to_amplitude(raw, norm.sar_db))


@pytest.mark.parametrize("options", [dict(stretch="minmax"), dict(bands=(3, 2, 1)), dict(nodata=60000.0),
                                     dict(bands=(4,), stretch=(10.0, 90.0))])
def test_a_preview_shows_the_pixels_the_run_saw(tmp_path, four_bands, options):
    raster, points = four_bands
    result = segment(raster, points, None, predictor=SquarePredictor(half=4), **options)
    norm = Normalization(**result.report["stretch"])
    png = render_preview(raster, _empty_layers(), tmp_path / "p.png", norm)
    shown = np.asarray(Image.open(png))
    assert np.array_equal(shown, _seen_by_the_engine(raster, norm))
    default = Normalization(**segment(raster, points, None, predictor=SquarePredictor(half=4)).report["stretch"])
    assert not np.array_equal(shown, _seen_by_the_engine(raster, default)), "the option changes what is seen"


def test_the_preview_draws_the_runs_objects_over_the_image(tmp_path, four_bands):
    raster, points = four_bands
    result = segment(raster, points, None, predictor=SquarePredictor(half=4))
    norm = Normalization(**result.report["stretch"])
    plain = np.asarray(Image.open(render_preview(raster, _empty_layers(), tmp_path / "plain.png", norm)))
    drawn = np.asarray(Image.open(render_preview(raster, result.layers, tmp_path / "drawn.png", norm)))
    changed = np.argwhere((plain != drawn).any(axis=2))
    assert len(changed) > 20
    rows, cols = changed[:, 0], changed[:, 1]
    assert abs(rows.mean() - 30) < 3 and abs(cols.mean() - 40) < 3  # around the click (row 30, column 40)
    assert shapely.box(cols.min(), rows.min(), cols.max(), rows.max()).area < 20 * 20


def test_a_failed_preview_leaves_no_file(tmp_path, four_bands, monkeypatch):
    raster, points = four_bands
    norm = Normalization(**segment(raster, points, None, predictor=SquarePredictor(half=4)).report["stretch"])

    def full_disk(self, fp, *args, **kwargs):
        open(fp, "wb").write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(OSError):
        render_preview(raster, _empty_layers(), tmp_path / "p.png", norm)
    assert not (tmp_path / "p.png").exists() and not any(TEMP_MARK in p.name for p in tmp_path.iterdir())
