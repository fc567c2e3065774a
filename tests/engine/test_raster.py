import ctypes

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp

from pointsam_engine.errors import RasterError
from pointsam_engine.raster import Raster, compute_normalization
from tests.conftest import write_raster


def test_default_bands_follow_colour_interpretation(tmp_path):
    path = write_raster(tmp_path / "bgrn.tif", np.zeros((4, 20, 20), np.uint8))
    with rasterio.open(path, "r+") as dst:
        dst.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]
    with Raster(path) as r:
        assert r.bands == (3, 2, 1)
    with Raster(path, bands=(4,)) as r:
        assert r.bands == (4, 4, 4)
    with pytest.raises(RasterError, match="band 5 does not exist.*1..4"):
        Raster(path, bands=(5, 1, 2))


def test_single_band_is_repeated_and_two_bands_fall_back_to_the_first(tmp_path):
    with Raster(write_raster(tmp_path / "one.tif", np.zeros((1, 8, 8), np.uint16))) as r:
        assert r.bands == (1, 1, 1)
    with Raster(write_raster(tmp_path / "two.tif", np.zeros((2, 8, 8), np.uint16))) as r:
        assert r.bands == (1, 1, 1)


@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32", "float64"])
def test_percentile_stretch_excludes_nodata_and_maps_to_8_bit(tmp_path, dtype):
    rng = np.random.default_rng(0)
    data = rng.uniform(100, 1100, (1, 64, 64)).astype(dtype)
    data[:, :, :16] = -999 if dtype != "uint16" else 0
    nodata = -999 if dtype != "uint16" else 0
    path = write_raster(tmp_path / f"{dtype}.tif", data, nodata=nodata)
    with Raster(path) as r:
        norm = compute_normalization(r, (2, 98))
        valid = data[0, :, 16:].astype(float)
        assert norm.low[0] == pytest.approx(np.percentile(valid, 2))
        assert norm.high[0] == pytest.approx(np.percentile(valid, 98))
        image, ok = r.read_chip(0, 0, 256, norm)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert not ok[:, :16].any() and ok[:, 16:].all()
    inside = image[:, 16:, 0]
    assert 0.015 < (inside == 0).mean() < 0.03 and 0.015 < (inside == 255).mean() < 0.03


def test_complex_sar_is_taken_as_amplitude_and_db_applies_before_the_stretch(tmp_path):
    amp = np.random.default_rng(1).uniform(1, 1000, (1, 32, 32))
    phase = np.exp(1j * np.random.default_rng(2).uniform(0, 6, (1, 32, 32)))
    path = write_raster(tmp_path / "slc.tif", (amp * phase).astype(np.complex64))
    with Raster(path) as r:
        norm = compute_normalization(r, "minmax", sar_db=True)
    assert norm.low[0] == pytest.approx(10 * np.log10(amp.min()), rel=1e-4)
    assert norm.high[0] == pytest.approx(10 * np.log10(amp.max()), rel=1e-4)


def test_stretch_none_and_minmax(tmp_path):
    data = np.arange(300, dtype=np.uint16).reshape(1, 15, 20)
    with Raster(write_raster(tmp_path / "a.tif", data)) as r:
        none = compute_normalization(r, "none")
        raw, _ = r.read_chip(0, 0, 256, none)
        assert raw[0, :, 0].tolist() == list(range(20)) and raw[-1, -1, 0] == 255  # clipped, not scaled
        mm = compute_normalization(r, "minmax")
        scaled, _ = r.read_chip(0, 0, 256, mm)
        assert scaled[0, 0, 0] == 0 and scaled[-1, -1, 0] == 255


def test_all_chips_share_one_stretch_so_there_are_no_seams(tmp_path):
    data = np.random.default_rng(3).integers(0, 4000, (3, 300, 300)).astype(np.uint16)
    with Raster(write_raster(tmp_path / "big.tif", data)) as r:
        norm = compute_normalization(r, (2, 98))
        a, _ = r.read_chip(0, 0, 200, norm)
        b, _ = r.read_chip(100, 100, 200, norm)
    np.testing.assert_array_equal(a[100:, 100:], b[:100, :100])


def test_large_raster_stretch_samples_windows_only(tmp_path, monkeypatch):
    data = np.random.default_rng(4).integers(0, 255, (1, 2100, 2100), dtype=np.uint8)
    path = write_raster(tmp_path / "large.tif", data, tiled=True, blockxsize=256, blockysize=256)
    reads = []
    with Raster(path) as r:
        real = r._src.read

        def spy(*args, **kw):
            reads.append(kw["window"])
            return real(*args, **kw)

        monkeypatch.setattr(r._src, "read", spy)
        norm = compute_normalization(r, (2, 98))
    assert len(reads) == 256 and all(w.width == 64 and w.height == 64 for w in reads)
    assert norm.low[0] == pytest.approx(np.percentile(data, 2), abs=3)


def test_chip_scale_reads_a_larger_area_into_coarser_pixels(tmp_path):
    data = np.zeros((3, 400, 400), np.uint8)
    data[:, 200:, :] = 200
    with Raster(write_raster(tmp_path / "s.tif", data), chip_scale=2.0) as r:
        assert r.working_shape == (200, 200) and r.working_transform.a == pytest.approx(1.0)
        image, _ = r.read_chip(0, 0, 256, compute_normalization(r, "none"))
    assert image.shape == (200, 200, 3)
    assert (image[:99, :, 0] == 0).all() and (image[101:, :, 0] == 200).all()


def test_an_area_reads_its_part_on_the_raster_at_every_nth_pixel(tmp_path):
    data = np.zeros((3, 300, 400), np.uint8)
    data[:, 150:, :] = 200  # the lower half bright
    data[:, :, 300:] = 100  # and a right-hand strip
    with Raster(write_raster(tmp_path / "a.tif", data)) as r:
        none = compute_normalization(r, "none")
        full, valid = r.read_area(100, 250, 120, 500, none)  # runs 350 columns past the raster's right edge
        half, _ = r.read_area(100, 250, 120, 500, none, step=2)
    assert full.shape == (120, 150, 3) and valid.all()
    assert half.shape == (60, 75, 3)
    assert (half[:24, :24, 0] == 0).all() and (half[26:, :24, 0] == 200).all()  # the step from row 150 at 25
    assert (half[:24, 27:, 0] == 100).all()  # the strip from column 300 at 25


def test_raster_errors(tmp_path):
    with pytest.raises(RasterError, match="does not exist"):
        Raster(tmp_path / "missing.tif")
    bad = tmp_path / "bad.tif"
    bad.write_text("not a raster")
    with pytest.raises(RasterError, match="cannot read raster"):
        Raster(bad)
    nocrs = write_raster(tmp_path / "nocrs.tif", np.zeros((1, 8, 8), np.uint8), crs=None)
    with pytest.raises(RasterError, match="no CRS; pass --assume-crs"):
        Raster(nocrs)
    with Raster(nocrs, assume_crs="EPSG:32633") as r:
        assert r.crs.to_epsg() == 32633


def _gdal():
    """The GDAL library rasterio runs on (its wheel's copy, or the system's), to read the block cache's figures."""
    import glob
    import os

    libs = glob.glob(os.path.join(os.path.dirname(rasterio.__file__), os.pardir, "rasterio.libs", "libgdal*"))
    gdal = ctypes.CDLL(libs[0] if libs else "libgdal.so")
    gdal.GDALGetCacheUsed64.restype = gdal.GDALGetCacheMax64.restype = ctypes.c_int64
    return gdal


def _cache_held_over_all_chips(gdal, path, size=512) -> int:
    """The most GDAL's block cache held while the chips of ``path`` were read (closing the file empties it)."""
    held = 0
    with Raster(str(path)) as r:
        norm = compute_normalization(r, "minmax")
        for row in range(0, r.height, size):
            for col in range(0, r.width, size):
                r.read_chip(row, col, size, norm)
                held = max(held, gdal.GDALGetCacheUsed64())
    return held


def test_reads_keep_gdals_block_cache_under_the_engines_cap(tmp_path, monkeypatch):
    """GDAL's default cache (5 % of the RAM) held 659 MB after 120 chips of the 20,000² benchmark raster."""
    import pointsam_engine.raster as raster

    gdal = _gdal()
    path = write_raster(tmp_path / "big.tif", np.random.default_rng(0).integers(0, 255, (3, 2048, 2048), np.uint8),
                        tiled=True, blockxsize=256, blockysize=256)  # 12 MB of blocks
    monkeypatch.setattr(raster, "READ_CACHE_MB", 2)
    assert _cache_held_over_all_chips(gdal, path) <= 2 * 2**20
    monkeypatch.setattr(raster, "READ_CACHE_MB", 64)
    assert _cache_held_over_all_chips(gdal, path) > 8 * 2**20  # the cap is what held it, not the file


def test_a_users_gdal_cachemax_is_kept(tmp_path, monkeypatch):
    gdal = _gdal()
    path = write_raster(tmp_path / "r.tif", np.zeros((3, 64, 64), np.uint8))
    users = 37 * 2**20  # unlike the engine's cap, which an earlier test may have left in place
    gdal.GDALSetCacheMax64.argtypes = [ctypes.c_int64]
    gdal.GDALSetCacheMax64(users)
    monkeypatch.setenv("GDAL_CACHEMAX", "37")
    seen = []
    with Raster(str(path)) as r:
        norm = compute_normalization(r, "minmax")
        read = r._src.read
        monkeypatch.setattr(r._src, "read", lambda *a, **k: seen.append(gdal.GDALGetCacheMax64()) or read(*a, **k))
        r.read_chip(0, 0, 64, norm)
    assert seen == [users]
