"""Regularized outlines on hand-made masks whose right answer is known."""

import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.features import rasterize
from shapely import affinity

from pointsam_engine.regularize import regularize, right_angle_share, vertex_counts
from pointsam_engine.vectorize import oriented_boxes, overlapping, to_map, trace

PIXEL = 0.3
TRANSFORM = Affine(PIXEL, 0, 500000, 0, -PIXEL, 4000000)  # 0.3 m pixels in UTM
CRS = "EPSG:32636"


def staircase(*shapes, size=120):
    """Each pixel-coordinate polygon burnt into one raster (later shapes win a shared pixel), traced, in map units."""
    labels = rasterize([(s, k) for k, s in enumerate(shapes, 1)], out_shape=(size, size), fill=0)
    return to_map([trace(labels == k, 0, 0) for k in range(1, len(shapes) + 1)], TRANSFORM)


def truth(shape):
    return to_map([shape], TRANSFORM)[0]


def run(masks, mode, scores=None):
    scores = np.ones(len(masks)) if scores is None else np.asarray(scores, float)
    return regularize(masks, masks, scores, mode, CRS, PIXEL)


def corner_angles(geom):
    xy = np.asarray(geom.exterior.coords)[:-1]
    a, b = np.roll(xy, 1, axis=0) - xy, np.roll(xy, -1, axis=0) - xy
    return np.degrees(np.arccos((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def test_an_l_shaped_staircase_becomes_an_l_with_right_angles():
    ell = affinity.rotate(shapely.Polygon([(0, 0), (60, 0), (60, 25), (25, 25), (25, 70), (0, 70)]), 23,
                          origin=(30, 35))
    ell = affinity.translate(ell, 30, 25)
    mask = staircase(ell)
    assert vertex_counts(mask)[0] > 40  # the staircase
    (out,), ious = run(mask, "buildings")
    assert out.geom_type == "Polygon" and len(out.interiors) == 0
    assert vertex_counts([out])[0] == 6
    assert np.all(np.abs(corner_angles(out) - 90) < 1)
    assert out.symmetric_difference(truth(ell)).area / truth(ell).area < 0.1
    assert ious[0] == pytest.approx(out.intersection(mask[0]).area / out.union(mask[0]).area)
    assert ious[0] > 0.9


def test_a_rotated_rectangle_keeps_its_angle():
    rect = affinity.rotate(shapely.box(30, 45, 90, 75), 31)
    (out,), _ = run(staircase(rect), "buildings")
    assert vertex_counts([out])[0] == 4
    edge = np.diff(np.asarray(out.exterior.coords)[:2], axis=0)[0]
    angle = np.degrees(np.arctan2(edge[1], edge[0])) % 90
    # the map's y axis points up, the raster's rows down: a 31° turn in pixels is -31° (59° mod 90) on the map
    assert angle == pytest.approx(59, abs=2)
    assert right_angle_share([out]) == 1.0


def test_a_footprint_whose_walls_do_not_meet_at_right_angles_keeps_its_shape():
    trapezoid = shapely.Polygon([(25, 30), (95, 30), (80, 90), (40, 90)])  # walls at 76° and 104°
    mask = staircase(trapezoid)
    (out,), ious = run(mask, "buildings")
    assert vertex_counts([out])[0] == 4
    assert np.allclose(np.sort(corner_angles(out)), [76, 76, 104, 104], atol=3)
    right = truth(trapezoid)
    assert out.intersection(right).area / out.union(right).area > 0.95 and ious[0] > 0.95
    # a rectangle's staircase of the same size still comes out square
    (square,), _ = run(staircase(affinity.rotate(shapely.box(25, 30, 95, 90), 4)), "buildings")
    assert vertex_counts([square])[0] == 4 and right_angle_share([square]) == 1.0


def test_a_neighbour_does_not_follow_a_footprint_whose_walls_are_not_square():
    trapezoid = shapely.Polygon([(10, 30), (70, 30), (60, 90), (20, 90)])
    house = affinity.rotate(shapely.box(74, 40, 92, 66), 4)  # 4° off the trapezoid's base, a few pixels away
    outs, _ = run(staircase(trapezoid, house), "buildings")
    assert not np.allclose(np.sort(corner_angles(outs[0])), 90, atol=3)  # the trapezoid kept its shape
    assert np.all(off_axis(outs[1]) > 2)  # the house kept its own walls, not the base's direction


def test_a_footprint_whose_walls_do_not_meet_at_right_angles_takes_no_direction_from_a_larger_neighbour():
    trapezoid = shapely.Polygon([(70, 40), (100, 40), (95.2, 70), (74.8, 70)])  # walls about 9° off square
    house = affinity.rotate(shapely.box(10, 20, 62, 100), 1.5)  # larger, a few pixels away
    outs, _ = run(staircase(house, trapezoid), "buildings")
    assert right_angle_share([outs[0]]) == 1.0
    assert np.all(np.abs(np.sort(corner_angles(outs[1])) - 90) > 5)  # the trapezoid kept its own corners


def test_two_touching_regularized_squares_do_not_overlap():
    left = affinity.rotate(shapely.box(20, 30, 60.5, 80), 12, origin=(60, 55))
    right = affinity.rotate(shapely.box(59.5, 30, 100, 80), 12, origin=(60, 55))  # overlaps the left by a pixel
    masks = staircase(left, right)
    assert masks[0].intersection(masks[1]).area == 0 and masks[0].distance(masks[1]) == 0  # they share a wall
    outs, ious = run(masks, "buildings", scores=[0.9, 0.8])
    assert outs[0].intersection(outs[1]).area == pytest.approx(0, abs=1e-9)
    assert overlapping(outs) == []
    assert all(right_angle_share([o]) == 1.0 for o in outs) and (ious > 0.9).all()
    # the wall stays shared: no gap wider than a pixel opens between them
    assert outs[0].distance(outs[1]) < 1e-6 and outs[0].buffer(PIXEL).intersection(outs[1]).area > 10 * PIXEL ** 2


def test_regularizing_starts_no_process_even_in_a_threaded_server(monkeypatch):
    """A fork in the engine's threaded server can hang a job, so regularizing must run in this process."""
    import multiprocessing.process

    def start(process):
        raise AssertionError("regularizing started a process")

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start)
    left = affinity.rotate(shapely.box(20, 30, 60.5, 80), 12, origin=(60, 55))
    right = affinity.rotate(shapely.box(59.5, 30, 100, 80), 12, origin=(60, 55))
    outs, _ = run(staircase(left, right), "buildings", scores=[0.9, 0.8])
    assert len(outs) == 2


def test_a_ragged_rectangle_becomes_a_rectangle_closer_to_the_truth_than_its_mask():
    rng = np.random.default_rng(3)
    rect = affinity.rotate(shapely.box(25, 40, 95, 80), 17, origin=(60, 60))
    ragged = rect
    for _ in range(40):  # bumps and bites of one to three pixels along the walls, as a model's mask has them
        x, y = np.asarray(rect.exterior.interpolate(rng.uniform(0, rect.length)).coords[0])
        bite = shapely.box(x - 1.5, y - 1.5, x + 1.5, y + 1.5).buffer(rng.uniform(0, 1.5))
        ragged = ragged.union(bite) if rng.random() < 0.5 else ragged.difference(bite)
    mask = staircase(ragged)
    (out,), _ = run(mask, "buildings")
    assert vertex_counts([out])[0] == 4 and right_angle_share([out]) == 1.0
    right = truth(rect)
    assert out.intersection(right).area / out.union(right).area > mask[0].intersection(right).area / mask[0].union(right).area


def test_neighbours_a_few_degrees_apart_take_one_direction():
    big = affinity.rotate(shapely.box(10, 30, 60, 90), 20, origin=(35, 60))
    small = affinity.rotate(shapely.box(72, 45, 92, 70), 22, origin=(82, 57))  # 2° off, four pixels away
    outs, _ = run(staircase(big, small), "buildings")

    def direction(geom):
        xy = np.asarray(geom.exterior.coords)
        d = np.diff(xy, axis=0)
        k = int(np.argmax(np.hypot(d[:, 0], d[:, 1])))
        return np.degrees(np.arctan2(d[k, 1], d[k, 0])) % 90

    turn = (direction(outs[0]) - direction(outs[1]) + 45) % 90 - 45
    assert abs(turn) < 0.5
    assert all(vertex_counts([o])[0] == 4 for o in outs)


def test_the_overlap_goes_to_the_object_whose_mask_held_it():
    # the lower-scored object holds the disputed strip in its mask, so it keeps it
    a = shapely.box(20, 20, 60, 60)
    b = shapely.Polygon([(60, 20), (100, 20), (100, 60), (61, 60), (59, 40), (61, 20)])
    masks = staircase(a, b)
    bulge = masks[1].union(truth(shapely.box(56, 30, 62, 50)))  # regularizing b pushed it into a
    outs, _ = regularize(np.array([masks[0], bulge], dtype=object), masks, np.array([0.2, 0.9]), "none", CRS, PIXEL)
    assert overlapping(outs)  # "none" changes nothing
    from pointsam_engine.regularize import settle_overlaps
    settled = settle_overlaps(np.array([masks[0], bulge], dtype=object), masks, np.array([0.2, 0.9]))
    assert overlapping(settled) == []
    assert settled[0].area == pytest.approx(masks[0].area)  # a's own pixels stay a's despite b's higher score


def test_a_ship_hull_is_smooth_and_stays_inside_its_oriented_box():
    hull = affinity.rotate(shapely.Polygon([(10, 45), (80, 45), (105, 55), (80, 65), (10, 65)]), -35, origin=(60, 55))
    mask = staircase(hull)
    box = oriented_boxes(mask)[0]
    (out,), ious = run(mask, "ships")
    assert out.difference(box).area < 1e-9 * box.area
    assert right_angle_share([out]) < 0.2 < right_angle_share(mask)  # the staircase's corners are gone
    assert ious[0] > 0.9
    assert out.symmetric_difference(truth(hull)).area < mask[0].symmetric_difference(truth(hull)).area


def test_small_holes_are_filled_and_large_ones_kept():
    ring = shapely.box(10, 10, 110, 110).difference(shapely.box(40, 40, 80, 80)).difference(shapely.box(20, 20, 24, 24))
    (out,), _ = regularize(staircase(ring), staircase(ring), np.ones(1), "buildings", CRS, PIXEL, min_hole_m2=10.0)
    assert len(out.interiors) == 1
    assert shapely.Polygon(out.interiors[0]).area == pytest.approx(40 * 40 * PIXEL ** 2, rel=0.1)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="roofs"):
        run(staircase(shapely.box(10, 10, 50, 50)), "roofs")


def test_segment_records_regularized_and_iou_to_mask_and_keeps_neighbours_apart(tmp_path):
    from rasterio.transform import from_origin

    from pointsam_engine import segment
    from tests.conftest import SquarePredictor, pixel_centres, write_points, write_raster

    transform = from_origin(500000.0, 4000000.0, 0.5, 0.5)
    raster = write_raster(tmp_path / "scene.tif", np.full((3, 200, 200), 90, np.uint8), transform=transform)
    centres = [(50, 50), (50, 62), (50, 74), (120, 120)]  # squares of 20 px 12 px apart: neighbours fight
    points = write_points(tmp_path / "points.gpkg", pixel_centres(transform, centres), cls=["b"] * 4)
    plain = segment(raster, points, None, predictor=SquarePredictor(), class_field="cls").layers
    for mode in ("buildings", "ships"):
        layers = segment(raster, points, None, predictor=SquarePredictor(), class_field="cls", regularize=mode).layers
        inst = layers["instances"]
        assert list(inst.columns) == list(plain["instances"].columns)  # every field kept, none renamed
        assert inst["regularized"].all() and not plain["instances"]["regularized"].any()
        assert ((inst["iou_to_mask"] > 0.7) & (inst["iou_to_mask"] <= 1)).all()  # thin strips between neighbours move most
        assert overlapping(inst.geometry.values) == []
        assert (inst["class"] == "b").all() and sorted(inst["point_fid"]) == sorted(plain["instances"]["point_fid"])
    assert (plain["instances"]["iou_to_mask"] > 0.9).all()  # without regularizing, only the one-pixel simplification


def test_bad_regularize_is_one_line_and_writes_nothing(tmp_path):
    from click.testing import CliRunner

    from pointsam_engine.cli import main
    from pointsam_engine.config import SegmentConfig
    from pointsam_engine.errors import OptionError
    from tests.conftest import write_points, write_raster

    raster = write_raster(tmp_path / "scene.tif", np.zeros((3, 64, 64), np.uint8))
    points = write_points(tmp_path / "points.gpkg", [(500010.0, 3999990.0)])
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(main, ["segment", str(raster), str(points), "-o", str(tmp_path / "out.gpkg"),
                                       "--regularize", "roofs", "-q"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--regularize 'roofs' is not one of none, buildings, ships" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    with pytest.raises(OptionError, match="regularize"):
        SegmentConfig(regularize="roofs")


def test_buildings_fit_the_mask_not_its_simplified_outline():
    """A rectangle's mask and an outline simplified too far (its corners cut deep): the footprint is the
    mask's rectangle; ships smooth the outline they are given."""
    rect = truth(affinity.rotate(shapely.box(30, 45, 90, 75), 31))
    cut = shapely.simplify(rect.buffer(-4 * PIXEL, join_style="bevel"), PIXEL)  # an octagon inside the mask
    (out,), ious = regularize([cut], [rect], np.ones(1), "buildings", CRS, PIXEL)
    assert vertex_counts([out])[0] == 4 and ious[0] > 0.98
    (hull,), _ = regularize([cut], [rect], np.ones(1), "ships", CRS, PIXEL)
    assert hull.within(cut.buffer(1e-6))


def off_axis(geom) -> np.ndarray:
    """How far (degrees) each edge of ``geom``'s exterior lies off the grid's axes."""
    edges = np.diff(np.asarray(geom.exterior.coords), axis=0)
    directions = np.degrees(np.arctan2(edges[:, 1], edges[:, 0])) % 90
    return np.minimum(directions, 90 - directions)


def test_an_l_whose_best_rectangle_is_not_along_its_walls_keeps_its_walls():
    # an L of two equal arms: a rectangle fits it best a few degrees off its walls, its edges run along them
    ell = affinity.translate(shapely.Polygon([(0, 0), (60, 0), (60, 20), (20, 20), (20, 60), (0, 60)]), 25, 25)
    (out,), _ = run(staircase(ell), "buildings")
    assert np.all(off_axis(out) < 0.5)
    assert out.intersection(truth(ell)).area / out.union(truth(ell)).area > 0.97


@pytest.mark.parametrize("transform, crs", [(TRANSFORM, CRS), (Affine(2.7e-6, 0, 32.59, 0, -2.7e-6, 0.35), "EPSG:4326")],
                         ids=["metres", "degrees"])  # degrees: ~0.3 m pixels at Kampala, fitted in a local frame
def test_a_footprint_the_raster_edge_cuts_off_ends_at_the_edge(transform, crs, monkeypatch):
    rect = affinity.rotate(shapely.box(-20, 30, 50, 70), 31, origin=(15, 50))  # a third of it off the raster
    labels = rasterize([(rect, 1)], out_shape=(120, 120), fill=0)
    mask = to_map([trace(labels == 1, 0, 0)], transform)
    extent = to_map([shapely.box(0, 0, 120, 120)], transform)[0]
    (free,), _ = regularize(mask, mask, np.ones(1), "buildings", crs, PIXEL)
    assert free.difference(extent).area < 1e-9 * extent.area  # its simplified outline, cut where the mask is
    monkeypatch.setattr("pointsam_engine.regularize.FREE_SHARES", ())  # right-angled fits only: they run past
    (past,), _ = regularize(mask, mask, np.ones(1), "buildings", crs, PIXEL)
    (out,), ious = regularize(mask, mask, np.ones(1), "buildings", crs, PIXEL, extent=extent)
    assert past.difference(extent).area > 1e-3 * extent.area  # fitted alone, it runs on past the raster's edge
    assert out.is_valid and out.difference(extent).area < 1e-9 * extent.area
    assert out.area == pytest.approx(past.intersection(extent).area, rel=1e-4)
    assert ious[0] == pytest.approx(out.intersection(mask[0]).area / out.union(mask[0]).area, rel=1e-3)


def test_a_neighbour_takes_the_direction_the_larger_footprint_keeps():
    # the L keeps its walls' direction (its best rectangle's lies a few degrees off); the small house beside it,
    # 4° off the walls, takes the walls' direction, not the one the L dropped
    ell = affinity.translate(shapely.Polygon([(0, 0), (60, 0), (60, 20), (20, 20), (20, 60), (0, 60)]), 20, 25)
    house = affinity.rotate(shapely.box(86, 30, 106, 58), 4)
    outs, _ = run(staircase(ell, house), "buildings")
    for out in outs:
        assert np.all(off_axis(out) < 0.5)
