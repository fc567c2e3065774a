import numpy as np
import pytest
import shapely
from affine import Affine

from pointsam_engine.masks import MaskPatch
from pointsam_engine.measure import Measurer
from pointsam_engine.vectorize import clean_mask, overlapping, simplify_coverage, to_map, trace


def test_clean_mask_keeps_the_clicked_part_and_fills_only_small_holes():
    logits = -np.ones((40, 40), np.float32)
    logits[2:20, 2:20] = 1  # clicked part, with a 2x2 hole and a 6x6 hole
    logits[5:7, 5:7] = -1
    logits[10:16, 10:16] = -1
    logits[30:35, 30:35] = 1  # a speck
    patch = MaskPatch(100, 200, logits, 0.8)
    keep = clean_mask(patch, np.array([[203.5, 103.5]]), max_hole_px=10)
    assert not keep[30:35, 30:35].any()
    assert keep[5:7, 5:7].all() and not keep[10:16, 10:16].any()
    missed = clean_mask(patch, np.array([[239.5, 139.5]]), max_hole_px=0)  # click on no part: keep the largest
    assert missed[2:4, 2:4].all() and not missed[30:35, 30:35].any()


def test_trace_and_transform_give_map_polygons_with_exact_pixel_area():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:9] = True
    geom = trace(mask, 100, 200)
    assert geom.area == 18 and geom.bounds == (203, 102, 209, 105)
    transform = Affine(0.5, 0, 1000, 0, -0.5, 5000)
    mapped = to_map([geom], transform)[0]
    assert mapped.area == pytest.approx(18 * 0.25)
    assert mapped.bounds == pytest.approx((1101.5, 4947.5, 1104.5, 4949.0))


def test_coverage_simplification_keeps_neighbours_apart():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.repeat(rng.integers(0, 4, (12, 12)), 5, axis=0), 5, axis=1)
    geoms = [trace(labels == k, 0, 0) for k in range(4)]
    simplified = simplify_coverage(np.array(geoms, dtype=object), 3.0)
    assert overlapping(simplified) == []
    assert all(g.is_valid for g in simplified)
    assert sum(g.area for g in simplified) == pytest.approx(60 * 60, rel=0.02)


def test_box_dimensions_of_a_rotated_rectangle_in_utm():
    rect = shapely.affinity.rotate(shapely.box(500000, 4000000, 500040, 4000010), 30, origin="centroid")
    angle, length, width = Measurer("EPSG:32633").box_dimensions([shapely.oriented_envelope(rect)])
    assert length[0] == pytest.approx(40, rel=0.002) and width[0] == pytest.approx(10, rel=0.002)
    # long side 30 degrees counter-clockwise from east = 60 degrees clockwise from grid north (plus convergence)
    assert angle[0] == pytest.approx(60, abs=1.5)


def test_geodesic_area_matches_planar_area_in_utm_and_is_metric_in_4326():
    square = shapely.box(500000, 4000000, 500100, 4000100)
    assert Measurer("EPSG:32633").areas([square])[0] == pytest.approx(10000, rel=0.002)
    deg = shapely.box(0, 0, 0.001, 0.001)
    assert Measurer("EPSG:4326").areas([deg])[0] == pytest.approx(111.32 * 110.57 * 1.0, rel=0.01)


def test_area_subtracts_holes_whatever_the_ring_winding():
    shell = [(500000, 4000000), (500010, 4000000), (500010, 4000010), (500000, 4000010)]  # counter-clockwise
    hole = [(500002, 4000002), (500004, 4000002), (500004, 4000004), (500002, 4000004)]  # also counter-clockwise
    with_hole = shapely.Polygon(shell, [hole])
    parts = shapely.MultiPolygon([shapely.Polygon(shell), shapely.Polygon([(x + 20, y) for x, y in shell[::-1]])])
    areas = Measurer("EPSG:32633").areas([with_hole, parts])
    assert areas == pytest.approx([96, 200], rel=0.002)


@pytest.mark.parametrize("crs, x0, y0, step", [("EPSG:32633", 500000, 4000000, 40.0), ("EPSG:4326", 32.58, 0.31, 4e-4),
                                                ("EPSG:4326", 10.0, 70.0, 1e-3), ("EPSG:3857", 3.6e6, 3.5e5, 40.0)])
def test_areas_of_many_objects_equal_their_geodesic_areas(crs, x0, y0, step):
    """All areas are computed at once on an equal-area projection; each equals pyproj's geodesic area."""
    rng = np.random.default_rng(0)
    centres = np.column_stack([x0 + rng.uniform(-100, 100, 300) * step, y0 + rng.uniform(-100, 100, 300) * step])
    geoms = shapely.buffer(shapely.points(centres), step * rng.uniform(0.1, 2, 300), quad_segs=3)
    measurer = Measurer(crs)
    geodesic = [measurer._geod.geometry_area_perimeter(shapely.orient_polygons(measurer._lonlat(g)))[0] for g in geoms]
    areas = measurer.areas(list(geoms) + [None])
    assert areas[:-1] == pytest.approx(geodesic, rel=1e-5) and areas[-1] == 0
