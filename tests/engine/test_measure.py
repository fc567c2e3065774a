"""Measurer: ground areas, lengths and box angles whatever the CRS."""

import numpy as np
import pytest
import shapely

from pointsam_engine.measure import Measurer


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


def test_ground_steps_are_metres_east_and_north_whatever_the_crs():
    # UTM on its central meridian: a map metre is 1 / 0.9996 metres on the ground, east stays east
    utm = Measurer("EPSG:32633").ground_steps([[500000.0, 6650000.0]] * 2, [[1.0, 0.0], [0.0, -1.0]])
    assert utm[0] == pytest.approx([1 / 0.9996, 0.0], abs=1e-6) and utm[1] == pytest.approx([0.0, -1 / 0.9996], abs=1e-6)
    # lon/lat at 60° N: a degree of longitude spans about half what a degree of latitude does
    east, north = Measurer("EPSG:4326").ground_steps([[10.0, 60.0]] * 2, [[1e-5, 0.0], [0.0, 1e-5]])
    assert east[1] == pytest.approx(0.0, abs=1e-6) and north[0] == pytest.approx(0.0, abs=1e-6)
    assert east[0] / north[1] == pytest.approx(np.cos(np.radians(60)), rel=0.01)
