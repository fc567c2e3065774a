import geopandas as gpd
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS

from pointsam_engine.evaluate import Grid, score_image, summarize

GRID = Grid(Affine(1.0, 0, 500000.0, 0, -1.0, 4000100.0), (100, 100), CRS.from_epsg(32633))


def _frame(geoms, **cols):
    return gpd.GeoDataFrame(cols, geometry=list(geoms), crs="EPSG:32633")


def _sq(x, y, side=10):
    return shapely.box(500000 + x, 4000000 + y, 500000 + x + side, 4000000 + y + side)


def _points(xy, fids):
    frame = _frame([shapely.Point(500000 + x, 4000000 + y) for x, y in xy])
    frame.index = fids
    return frame


def test_identical_polygons_score_one():
    truth = _frame([_sq(10, 10), _sq(40, 40)])
    pred = _frame([_sq(10, 10), _sq(40, 40)], point_fid=[1, 2])
    score = score_image(pred, truth, GRID, _points([(15, 15), (45, 45)], [1, 2]))
    assert (score.miou, score.mf1, score.instances, score.merges, score.missed_points) == (1.0, 1.0, 2, 0, 0)


def test_half_overlapping_square_has_iou_one_third_and_f1_one_half():
    truth = _frame([_sq(10, 10)])
    pred = _frame([_sq(15, 10)], point_fid=[1])
    score = score_image(pred, truth, GRID, _points([(16, 15)], [1]))
    assert score.miou == pytest.approx(1 / 3) and score.mf1 == pytest.approx(0.5)
    without_points = score_image(pred, truth, GRID)
    assert without_points.miou == pytest.approx(1 / 3)


def test_a_missed_point_counts_as_zero():
    truth = _frame([_sq(10, 10), _sq(40, 40)])
    pred = _frame([_sq(10, 10)], point_fid=[1])
    score = score_image(pred, truth, GRID, _points([(15, 15), (45, 45)], [1, 2]))
    assert score.missed_points == 1 and score.miou == pytest.approx(0.5) and score.instances == 2


def test_clicks_off_the_grid_are_counted_apart_and_not_scored():
    """Truth polygons and clicks over a wider area than the raster (a city's footprints, one chip's run): the
    clicks segment skipped as outside the raster are not misses."""
    truth = _frame([_sq(10, 10), _sq(200, 10), _sq(-50, 40)])
    pred = _frame([_sq(10, 10)], point_fid=[1])
    score = score_image(pred, truth, GRID, _points([(15, 15), (205, 15), (-45, 45)], [1, 2, 3]))
    assert (score.miou, score.instances, score.missed_points, score.clicks_off_raster) == (1.0, 1, 0, 2)
    on_edge = _frame([_sq(10, 10), _sq(95, 45, 5), _sq(100, 45, 5)])  # the second on the grid's last columns
    # segment's rule: the last column's pixels are on the grid, the grid's right edge is the next pixel's (off)
    edge = score_image(pred, on_edge, GRID, _points([(15, 15), (99.5, 47), (100, 47)], [1, 2, 3]))
    assert (edge.missed_points, edge.clicks_off_raster) == (1, 1)
    assert summarize([score, edge])["clicks_off_raster"] == 3


def test_a_prediction_covering_two_objects_is_a_merge_and_two_clicks_on_one_object_are_counted():
    truth = _frame([_sq(10, 10), _sq(20, 10), _sq(60, 60)])
    merged = shapely.box(500010, 4000010, 500030, 4000020)
    pred = _frame([merged, _sq(60, 60)], point_fid=[1, 3])
    score = score_image(pred, truth, GRID, _points([(15, 15), (62, 62), (65, 65)], [1, 3, 4]))
    assert score.merges == 1 and score.truth_hit_twice == 1
    assert score.miou == pytest.approx((0.5 + 1.0 + 0.0) / 3)  # fid 4: a click with no prediction


def test_summary_averages_images_then_sums_counts():
    truth = _frame([_sq(10, 10)])
    good = score_image(_frame([_sq(10, 10)], point_fid=[1]), truth, GRID, _points([(15, 15)], [1]))
    half = score_image(_frame([_sq(15, 10)], point_fid=[1]), truth, GRID, _points([(16, 15)], [1]))
    figures = summarize([good, half])
    assert figures["miou"] == pytest.approx((1 + 1 / 3) / 2) and figures["images"] == 2
