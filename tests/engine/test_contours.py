import numpy as np
import pytest
import shapely
from scipy import ndimage

from pointsam_engine.contours import outline
from pointsam_engine.vectorize import simplify_coverage, trace

YY, XX = np.mgrid[0:60, 0:60] + 0.5  # pixel centres


def _centres_inside(geom, shape, row0=0, col0=0) -> np.ndarray:
    rows, cols = np.indices(shape)
    return shapely.contains_xy(geom, cols + col0 + 0.5, rows + row0 + 0.5)


def test_an_outline_holds_exactly_the_centres_of_its_inside_pixels():
    """Blobs with holes, islands and pixels meeting only at a corner: every inside centre is in, every other
    centre out, and the polygon is valid; 4-connected parts come out as separate polygons."""
    rng = np.random.default_rng(5)
    for seed in range(20):
        field = ndimage.gaussian_filter(rng.normal(size=(30, 40)), 1.5)
        field -= np.median(field)
        inside = field > 0
        geom = outline(inside, field, 7, 11)
        assert geom.is_valid
        assert (_centres_inside(geom, inside.shape, 7, 11) == inside).all(), seed
        _, parts = ndimage.label(inside)  # 4-connected
        assert len(shapely.get_parts(geom)) == parts


def test_a_discs_signed_distance_gives_a_round_outline_with_fewer_vertices_than_the_staircase():
    r = 20
    field = r - np.hypot(XX - 30.2, YY - 29.6)
    circle = shapely.Point(30.2, 29.6).buffer(r, quad_segs=256).exterior
    sub, stair = outline(field > 0, field), trace(field > 0, 0, 0)
    assert sub.area == pytest.approx(np.pi * r ** 2, rel=0.01)
    assert sub.hausdorff_distance(circle) < 0.05  # the staircase: 0.7 pixel
    sub1, stair1 = (simplify_coverage(np.array([g], dtype=object), 1.0)[0] for g in (sub, stair))
    assert len(sub1.exterior.coords) < 0.8 * len(stair1.exterior.coords)  # 27 vertices against 39
    assert sub1.hausdorff_distance(circle) < 0.5 * stair1.hausdorff_distance(circle)
    assert sub1.area == pytest.approx(np.pi * r ** 2, rel=0.01)


def test_pixels_meeting_at_a_corner_are_cut_apart_and_holes_hold_islands():
    diagonal = np.zeros((4, 4), bool)
    diagonal[1, 1] = diagonal[2, 2] = True
    pair = outline(diagonal, np.where(diagonal, 1.0, -1.0))
    assert pair.geom_type == "MultiPolygon" and len(pair.geoms) == 2 and pair.area == pytest.approx(1.0)
    d = np.hypot(XX - 30, YY - 30)
    field = np.where(d < 4, 4 - d, np.minimum(d - 9, 15 - d))  # an island in the hole of a ring
    geom = outline(field > 0, field)
    ring, island = sorted(geom.geoms, key=lambda g: -g.area)
    assert len(ring.interiors) == 1 and len(island.interiors) == 0
    assert shapely.Polygon(ring.interiors[0]).contains(island)
    assert geom.area == pytest.approx(np.pi * (15 ** 2 - 9 ** 2 + 4 ** 2), rel=0.02)


def test_where_the_field_is_unknown_the_edge_falls_half_way_on_the_pixel_edge():
    inside = np.ones((3, 4), bool)
    geom = outline(inside, np.ones((3, 4)), 10, 20)  # nothing known outside the array
    assert geom.bounds == (20, 10, 24, 13)
    assert geom.area == pytest.approx(12 - 4 * 0.125)  # marching squares cuts each corner by half a pixel
    assert outline(np.zeros((3, 4), bool), np.ones((3, 4))) is None
