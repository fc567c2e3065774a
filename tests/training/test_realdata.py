import geopandas as gpd
import numpy as np
import pytest
import shapely
from rasterio.transform import from_origin

from tests.conftest import write_raster
from training.realdata import RealPool, banepa_chips, jitter, load_mosaic, load_raster

TRANSFORM = from_origin(500000.0, 4000000.0, 0.5, 0.5)


def _footprints(boxes_px, transform=TRANSFORM, crs="EPSG:32633"):
    """Rectangles given as (row0, col0, row1, col1) pixels, as map polygons."""
    polys = [shapely.box(*(transform @ (c0, r1)), *(transform @ (c1, r0))) for r0, c0, r1, c1 in boxes_px]
    return gpd.GeoDataFrame(geometry=polys, crs=crs)


@pytest.fixture
def image(tmp_path):
    data = np.random.default_rng(0).integers(20, 60, (3, 300, 300), dtype=np.uint8)
    boxes = [(20, 20, 60, 80), (100, 150, 180, 200), (220, 30, 260, 90)]
    for r0, c0, r1, c1 in boxes:
        data[:, r0:r1, c0:c1] = 200
    raster = write_raster(tmp_path / "r.tif", data, transform=TRANSFORM)
    return load_raster(raster, _footprints(boxes).to_crs(4326), "test"), boxes


def test_footprints_become_instances_with_a_click_on_their_own_roof(image):
    labelled, boxes = image
    assert labelled.labels.max() == len(boxes) and labelled.image.shape == (300, 300, 3)
    for k, (r0, c0, r1, c1) in enumerate(boxes, 1):
        assert (labelled.labels[r0:r1, c0:c1] == k).all() and (labelled.labels == k).sum() == (r1 - r0) * (c1 - c0)
        x, y = labelled.clicks[k - 1]
        assert labelled.labels[int(y), int(x)] == k
    assert labelled.image[30, 30].min() > labelled.image[5, 5].max()  # stretched as the engine stretches


def test_adjacent_chips_make_one_mosaic_with_each_footprint_once(tmp_path):
    data = np.full((3, 100, 200), 40, np.uint8)
    data[:, 30:70, 80:120] = 200  # a roof across the seam between the two chips
    left = write_raster(tmp_path / "a.tif", data[:, :, :100], transform=TRANSFORM)
    right = write_raster(tmp_path / "b.tif", data[:, :, 100:], transform=TRANSFORM @ TRANSFORM.translation(100, 0))
    mosaic = load_mosaic([left, right], _footprints([(30, 80, 70, 120)]), "pair")
    assert mosaic.image.shape == (100, 200, 3) and len(mosaic.clicks) == 1
    assert (mosaic.labels == 1).sum() == 40 * 40


def test_samples_hold_whole_objects_each_with_its_click_inside(image):
    pool = RealPool([image[0]], scale=(0.5, 1.8))
    rng = np.random.default_rng(1)
    for _ in range(20):
        sample = pool.sample(rng, 128, 8)
        assert sample.image.shape == (128, 128, 3) and sample.masks.shape[1:] == (128, 128)
        for mask, points, labels in zip(sample.masks, sample.points, sample.labels):
            x, y = points[labels == 1][0]
            assert mask[min(int(y), 127), min(int(x), 127)]


def test_jitter_changes_the_colours_not_the_layout():
    rng = np.random.default_rng(2)
    img = np.zeros((32, 32, 3), np.uint8)
    img[8:24, 8:24] = 200
    out = jitter(img, rng)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert out[8:24, 8:24].mean() > out[:8].mean() + 50


def test_the_banepa_split_is_by_whole_tile_columns():
    train, held = banepa_chips(False), banepa_chips(True)
    if not held:
        pytest.skip("../shared/data is absent")
    assert len(held) == 8 and len(train) == 40
    assert {c.stem.split("-")[1] for c in held}.isdisjoint({c.stem.split("-")[1] for c in train})
