"""Generated scenes: deterministic, clicks inside their objects, truth the image shows."""

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from scipy import ndimage

from pointsam_engine.demo.scenes import render, write_scene


@pytest.mark.parametrize("kind", ["buildings", "ships"])
def test_scenes_are_deterministic_by_seed(kind):
    a, b, c = render(kind, 384, seed=7), render(kind, 384, seed=7), render(kind, 384, seed=8)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.clicks, b.clicks)
    assert [p.wkt for p in a.polygons] == [p.wkt for p in b.polygons]
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("kind", ["buildings", "ships"])
def test_every_click_lies_inside_its_own_valid_object(kind):
    scene = render(kind, 512, seed=3)
    assert len(scene.polygons) >= 5
    for i, (polygon, (x, y)) in enumerate(zip(scene.polygons, scene.clicks)):
        assert polygon.is_valid and polygon.contains(shapely.Point(x, y))
        assert scene.labels[int(y), int(x)] == i + 1
    assert not shapely.union_all(scene.polygons).area < 0.99 * sum(p.area for p in scene.polygons)  # no overlaps


def test_written_scene_has_the_right_crs_transform_and_layers(tmp_path):
    scene = render("buildings", 256, seed=1, resolution=0.5, crs="EPSG:32618", origin=(300000.0, 4500000.0))
    files = write_scene(scene, tmp_path, "b")
    with rasterio.open(files["raster"]) as src:
        assert src.crs.to_epsg() == 32618 and src.res == (0.5, 0.5) and src.bounds.left == 300000.0
        assert src.bounds.top == 4500000.0 and src.count == 3 and src.dtypes[0] == "uint8"
    truth = pyogrio.read_dataframe(files["truth"])
    points = pyogrio.read_dataframe(files["points"], fid_as_index=True)
    assert truth.crs.to_epsg() == points.crs.to_epsg() == 32618 and len(truth) == len(points) == len(scene.polygons)
    for geom, point in zip(truth.geometry, points.geometry):
        assert geom.contains(point)
    ships = write_scene(render("ships", 256, seed=1), tmp_path, "s")
    with rasterio.open(ships["raster"]) as src:
        assert src.count == 1 and src.dtypes[0] == "float32" and src.res == (1.5, 1.5)


def test_truth_matches_what_the_image_shows():
    b = render("buildings", 512, seed=2)
    grad = np.hypot(*np.gradient(b.image.astype(float).mean(axis=0)))
    boundary = (b.labels > 0) & ~ndimage.binary_erosion(b.labels > 0)
    assert grad[boundary].mean() > 2.5 * grad[b.labels == 0].mean()  # truth edges are image edges
    s = render("ships", 512, seed=2)
    land = np.zeros_like(s.labels, bool)
    land[:, : int(np.argmax(s.image[0].mean(axis=0) < 0.3))] = True  # the bright land strip on the left
    hull, sea = s.image[0][s.labels > 0], s.image[0][(s.labels == 0) & ~land]
    assert np.median(hull) > 5 * np.median(sea)


def _touching_colour_gaps(scene):
    """Median-roof-colour distance of each pair of houses that share a wall."""
    image = scene.image.astype(float)
    colour = [np.median(image[:, scene.labels == i + 1], axis=1) for i in range(len(scene.polygons))]
    tree = shapely.STRtree(scene.polygons)
    gaps = []
    for i, poly in enumerate(scene.polygons):
        for j in tree.query(poly, predicate="touches"):
            if j > i and shapely.intersection(poly, scene.polygons[j]).length > 1:
                gaps.append(np.abs(colour[i] - colour[j]).max())
    return np.array(gaps)


def test_dense_buildings_add_terraces_of_lookalike_houses():
    terraced = _touching_colour_gaps(render("buildings", 512, seed=3, density=2.0))
    mixed = _touching_colour_gaps(render("buildings", 512, seed=3, density=1.0))
    assert len(terraced) > 10 and (terraced < 25).mean() > 0.9, "a terrace shares one roof colour"
    assert len(mixed) > 10 and (mixed < 25).mean() < 0.5, "houses of their own have colours of their own"
