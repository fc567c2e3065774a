import numpy as np
import pytest
import shapely
from scipy import ndimage

from pointsam_engine.contours import _CASES, _MARGIN, _assemble, outline
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


def reference_outline(inside: np.ndarray, field: np.ndarray, row0: int = 0, col0: int = 0):
    """Marching squares for one object as it stood before all objects were traced in one pass: the
    reference the one-pass tracing must match vertex for vertex (same rule, written out per object)."""
    if not inside.any():
        return None
    ins = np.pad(inside, 1)
    f = np.pad(field.astype(np.float64), 1, constant_values=np.nan)
    h, w = ins.shape
    points = []
    for a, b, f_a, f_b, axis in ((ins[:, :-1], ins[:, 1:], f[:, :-1], f[:, 1:], 0),
                                 (ins[:-1, :], ins[1:, :], f[:-1, :], f[1:, :], 1)):
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.clip(f_a / (f_a - f_b), _MARGIN, 1 - _MARGIN)
        t = np.where(np.isnan(t), 0.5, t)
        rows, cols = np.indices(a.shape)
        xy = np.stack([(cols + col0 - 1 + 0.5) + (t if axis == 0 else 0.0),
                       (rows + row0 - 1 + 0.5) + (t if axis == 1 else 0.0)], axis=-1)
        xy[a == b] = np.nan
        points.append(xy.reshape(-1, 2))
    points = np.concatenate(points)
    case = (ins[:-1, :-1] * 1 + ins[:-1, 1:] * 2 + ins[1:, 1:] * 4 + ins[1:, :-1] * 8).ravel()
    rows, cols = np.divmod(np.arange(case.size), w - 1)
    n_h = h * (w - 1)
    edges = np.stack([rows * (w - 1) + cols, n_h + rows * w + cols + 1, (rows + 1) * (w - 1) + cols,
                      n_h + rows * w + cols], axis=1)
    src, dst = [], []
    for s in range(2):
        local = _CASES[case, s]
        cells = np.flatnonzero(local[:, 0] >= 0)
        src += edges[cells, local[cells, 0]].tolist()
        dst += edges[cells, local[cells, 1]].tolist()
    following = dict(zip(src, dst))
    rings, done = [], set()
    for start in src:
        if start in done:
            continue
        ring, e = [start], following[start]
        while e != start:
            ring.append(e)
            e = following[e]
        done.update(ring)
        rings.append(points[ring])
    return _assemble(rings)


def same_vertices(a, b) -> bool:
    """Both None, or the same geometry with bit-identical vertices in the same order."""
    if a is None or b is None:
        return a is None and b is None
    return a.equals_exact(b, 0) and np.array_equal(shapely.get_coordinates(a), shapely.get_coordinates(b))


def test_the_outline_matches_the_per_object_reference_vertex_for_vertex():
    """Random blobs with holes, islands, diagonal pixels, pixels on the array's edge, zeros, NaN and positive
    field values outside: the same vertices, bit for bit, as the per-object marching squares."""
    rng = np.random.default_rng(11)
    for seed in range(40):
        field = ndimage.gaussian_filter(rng.normal(size=(rng.integers(1, 25), rng.integers(1, 25))), 1.0)
        field -= np.median(field)
        inside = (field > 0) ^ (rng.random(field.shape) < 0.1)  # some inside pixels with a negative field
        field[rng.random(field.shape) < 0.05] = np.nan
        field[rng.random(field.shape) < 0.05] = 0.0
        row0, col0 = rng.integers(-50, 50, 2)
        assert same_vertices(outline(inside, field, row0, col0), reference_outline(inside, field, row0, col0)), seed
