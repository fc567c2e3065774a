import threading

import numpy as np
import pyogrio
import pytest
import shapely
from pyproj import Transformer
from rasterio.transform import from_origin

from pointsam_engine import segment
from pointsam_engine.errors import Cancelled, PointsError
from pointsam_engine.masks import MaskPatch
from pointsam_engine.vectorize import overlapping
from tests.conftest import SquarePredictor, grid_to_map, pixel_centres, write_points, write_raster

FIELDS = {"point_fid", "score", "area_m2", "calibrated", "model"}


def _utm_scene(tmp_path, nodata=None):
    data = np.random.default_rng(0).integers(1, 255, (3, 300, 400), dtype=np.uint8)
    transform = from_origin(500000.0, 4000000.0, 0.5, 0.5)
    return write_raster(tmp_path / "utm.tif", data, transform=transform, nodata=nodata), transform


def test_points_in_4326_over_utm_land_on_the_right_pixel(tmp_path):
    raster, transform = _utm_scene(tmp_path)
    cells = [(40, 50), (150, 200), (260, 380)]
    to_ll = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    lonlat = [to_ll.transform(x, y) for x, y in pixel_centres(transform, cells)]
    points = write_points(tmp_path / "ll.geojson", lonlat, crs="EPSG:4326")
    stub = SquarePredictor(half=5)
    res = segment(raster, points, predictor=stub)
    inst = res.layers["instances"]
    assert inst.crs.to_epsg() == 32633 and len(inst) == 3
    for (row, col), geom in zip(cells, inst.sort_values("point_fid").geometry):
        # the stub's square is centred on the pixel the click fell on: 10x10 pixels around it
        x0, y1 = grid_to_map(transform, col - 5, row - 5)
        x1, y0 = grid_to_map(transform, col + 5, row + 5)
        assert geom.bounds == pytest.approx((x0, y0, x1, y1), abs=0.51)
        assert geom.contains(shapely.Point(*grid_to_map(transform, col + 0.5, row + 0.5)))


def test_area_m2_is_pixel_count_times_pixel_area_in_utm(tmp_path, stub):
    raster, transform = _utm_scene(tmp_path)
    points = write_points(tmp_path / "p.gpkg", pixel_centres(transform, [(60, 60), (150, 250)]))
    inst = segment(raster, points, predictor=stub).layers["instances"]
    assert inst["area_m2"].to_numpy() == pytest.approx([400 * 0.25] * 2, rel=0.02)


def test_area_m2_is_metric_for_a_4326_raster(tmp_path, stub):
    res_deg = 1e-5
    transform = from_origin(32.58, 0.35, res_deg, res_deg)  # Kampala
    data = np.full((3, 300, 300), 120, np.uint8)
    raster = write_raster(tmp_path / "ll.tif", data, crs="EPSG:4326", transform=transform)
    points = write_points(tmp_path / "p.gpkg", pixel_centres(transform, [(150, 150)]), crs="EPSG:4326")
    from pyproj import Geod
    lon, lat = grid_to_map(transform, 150, 150)
    pixel_m2, _ = Geod(ellps="WGS84").polygon_area_perimeter(
        [lon, lon + res_deg, lon + res_deg, lon], [lat, lat, lat - res_deg, lat - res_deg])
    inst = segment(raster, points, predictor=stub).layers["instances"]
    assert inst.crs.to_epsg() == 4326
    assert inst["area_m2"].iloc[0] == pytest.approx(400 * abs(pixel_m2), rel=0.02)


def test_layers_fields_out_crs_and_metadata(tmp_path, blocks_scene, stub):
    raster, points, _, centres = blocks_scene
    out = tmp_path / "out.gpkg"
    res = segment(raster, points, out, predictor=stub, class_field="cls", out_crs="EPSG:3857")
    layers = {name for name, _ in pyogrio.list_layers(out)}
    assert layers == {"instances", "boxes", "bboxes", "skipped"}
    for name in ("instances", "boxes", "bboxes"):
        frame = pyogrio.read_dataframe(out, layer=name)
        assert FIELDS | {"class"} <= set(frame.columns)
        assert frame.crs.to_epsg() == 3857 and len(frame) == len(centres)
        assert (frame["class"] == "building").all()
    boxes = pyogrio.read_dataframe(out, layer="boxes")
    assert {"angle_deg", "length_m", "width_m"} <= set(boxes.columns)
    assert boxes["length_m"].to_numpy() == pytest.approx(10.0, rel=0.02)  # 20 px of 0.5 m, true metres
    meta = pyogrio.read_info(out, layer="instances")["dataset_metadata"]
    assert '"percentile"' in meta["pointsam_stretch"] and meta["pointsam_model"] == stub.label
    assert res.report["instances"] == len(centres) and res.report["encoder_passes"] == len(stub.chips)
    assert res.report["encoder_passes"] < len(centres)


def test_outside_and_nodata_points_go_to_skipped(tmp_path, stub):
    data = np.full((1, 200, 200), 500, np.uint16)
    data[:, :, :50] = 0
    transform = from_origin(500000.0, 4000000.0, 1.0, 1.0)
    raster = write_raster(tmp_path / "r.tif", data, transform=transform, nodata=0)
    xy = pixel_centres(transform, [(100, 100), (100, 10), (100, 300)])
    points = write_points(tmp_path / "p.gpkg", xy)
    res = segment(raster, points, predictor=stub)
    skipped = res.layers["skipped"].sort_values("point_fid")
    assert skipped["reason"].tolist() == ["on nodata", "outside raster"]
    assert skipped["point_fid"].tolist() == [2, 3] and res.layers["instances"]["point_fid"].tolist() == [1]


def test_calibration_separates_touching_objects_and_output_never_overlaps(tmp_path):
    raster, transform = _utm_scene(tmp_path)
    cells = [(100, 100), (100, 112), (112, 100), (200, 300)]
    points = write_points(tmp_path / "p.gpkg", pixel_centres(transform, cells))
    plain = segment(raster, points, predictor=SquarePredictor(half=12), calibration=False)
    calibrated = segment(raster, points, predictor=SquarePredictor(half=12))
    assert plain.report["overlaps_before_calibration"] == calibrated.report["overlaps_before_calibration"] == 3
    assert calibrated.report["calibrated"] == 3 and plain.report["calibrated"] == 0
    for res in (plain, calibrated):
        assert overlapping(res.layers["instances"].geometry.values) == []
        assert res.report["overlaps_after"] == 0
    inst = calibrated.layers["instances"].sort_values("point_fid")
    assert inst["calibrated"].tolist() == [True, True, True, False]
    clicks = [shapely.Point(*grid_to_map(transform, c + 0.5, r + 0.5)) for r, c in cells]
    for geom, click in zip(inst.geometry, clicks):
        assert geom.contains(click)
        assert sum(geom.contains(other) for other in clicks) == 1


def test_keep_overlaps_leaves_each_object_its_own_mask(tmp_path):
    raster, transform = _utm_scene(tmp_path)
    cells = [(100, 100), (100, 112), (112, 100), (200, 300)]
    points = write_points(tmp_path / "p.gpkg", pixel_centres(transform, cells))
    kept = segment(raster, points, predictor=SquarePredictor(half=12), calibration=False, keep_overlaps=True)
    settled = segment(raster, points, predictor=SquarePredictor(half=12), calibration=False)
    pairs = {(0, 1), (0, 2), (1, 2)}  # the three squares around (100..112, 100..112) overlap one another
    assert set(overlapping(kept.layers["instances"].sort_values("point_fid").geometry.values)) == pairs
    assert kept.report["overlaps_after"] == 3 and settled.report["overlaps_after"] == 0
    square_m2 = (2 * 12) ** 2 * 0.25
    # geodesic m² near the UTM meridian
    assert kept.layers["instances"]["area_m2"].tolist() == pytest.approx([square_m2] * 4, rel=2e-3)
    assert settled.layers["instances"]["area_m2"].sum() < kept.layers["instances"]["area_m2"].sum() - square_m2 / 2


def test_instance_and_label_fields_make_one_object_with_negatives(tmp_path):
    raster, transform = _utm_scene(tmp_path)
    xy = pixel_centres(transform, [(100, 100), (104, 104), (100, 106), (250, 50)])
    points = write_points(tmp_path / "p.gpkg", xy, obj=[7, 7, 7, 8], lab=[1, 1, 0, 1])
    stub = SquarePredictor(half=10)
    res = segment(raster, points, predictor=stub, instance_field="obj", label_field="lab", calibration=False)
    inst = res.layers["instances"].sort_values("point_fid")
    assert inst["instance"].tolist() == ["7", "8"] and inst["n_pos"].tolist() == [2, 1]
    assert inst["n_neg"].tolist() == [1, 0]
    sent = [p for call in stub.calls for p in call if len(p.points) == 3][0]
    assert sent.labels.tolist() == [1, 1, 0]


def test_progress_reaches_one_and_cancel_writes_nothing(tmp_path, blocks_scene, stub):
    raster, points, _, _ = blocks_scene
    seen = []
    segment(raster, points, predictor=stub, progress=lambda f, stage: seen.append(f))
    assert seen[-1] == 1.0 and seen == sorted(seen)
    event = threading.Event()
    out = tmp_path / "cancelled.gpkg"

    def cancel_midway(fraction, stage):
        if fraction > 0.3:
            event.set()

    with pytest.raises(Cancelled):
        segment(raster, points, out, predictor=SquarePredictor(), progress=cancel_midway, cancel=event)
    assert not out.exists()


def test_a_chip_of_many_objects_reports_how_far_its_decoding_has_come(tmp_path):
    """One chip, 70 objects: progress moves while they are decoded, not only when the chip is done."""
    from pointsam_engine.chip_loop import DECODE_GROUP

    raster, transform = _utm_scene(tmp_path)
    cells = [(row, col) for row in range(20, 300, 40) for col in range(20, 400, 40)]
    points = write_points(tmp_path / "p.gpkg", pixel_centres(transform, cells))
    seen = []
    segment(raster, points, predictor=SquarePredictor(half=5, chip_size=512),
            progress=lambda fraction, stage: seen.append((fraction, stage)))
    decoding = [(f, stage) for f, stage in seen if stage.startswith("decoding chip 1/1")]
    assert [stage for _, stage in decoding] == [f"decoding chip 1/1: {n}/{len(cells)} objects"
                                                for n in (DECODE_GROUP, 2 * DECODE_GROUP)]
    encoding = next(f for f, stage in seen if stage.startswith("encoding chip"))
    chip_done = next(f for f, stage in seen if stage == "chip 1/1")
    assert encoding < decoding[0][0] < decoding[1][0] < chip_done


def test_no_positive_point_is_an_error(tmp_path, stub):
    raster, transform = _utm_scene(tmp_path)
    points = write_points(tmp_path / "p.gpkg", pixel_centres(transform, [(10, 10)]), lab=[0])
    with pytest.raises(PointsError, match="positive"):
        segment(raster, points, predictor=stub, label_field="lab")


def test_objects_from_different_chips_never_overlap(tmp_path):
    from pointsam_engine.chips import plan_chips

    data = np.random.default_rng(0).integers(1, 255, (3, 300, 900), dtype=np.uint8)
    transform = from_origin(500000.0, 4000000.0, 0.5, 0.5)
    raster = write_raster(tmp_path / "wide.tif", data, transform=transform)
    cells = [(150, c) for c in range(40, 860, 9)]  # a row of objects 9 px apart, squares 24 px wide
    plan = plan_chips(np.array([r + 0.5 for r, _ in cells]), np.array([c + 0.5 for _, c in cells]), (300, 900), 256, 64)
    assert len(set(plan.owner.tolist())) > 1
    points = write_points(tmp_path / "p.gpkg", pixel_centres(transform, cells))
    res = segment(raster, points, predictor=SquarePredictor(half=12), calibration=False)
    inst = res.layers["instances"]
    assert len(inst) == len(cells) and overlapping(inst.geometry.values) == []
    assert res.report["overlaps_after_calibration"] >= len(cells) - 1 and res.report["overlaps_after"] == 0
    clicks = [shapely.Point(*grid_to_map(transform, c + 0.5, r + 0.5)) for r, c in cells]
    for geom, click in zip(inst.sort_values("point_fid").geometry, clicks):
        assert geom.contains(click)


KAMPALA = (32.58, 0.35)  # lon, lat of the 4326 rasters' corner
DEGREES = 1e-5  # their pixel size


def _kampala_raster(path, size=300):
    transform = from_origin(*KAMPALA, DEGREES, DEGREES)
    return write_raster(path, np.full((3, size, size), 120, np.uint8), crs="EPSG:4326", transform=transform), transform


def _kampala_pixel_metres() -> float:
    from pyproj import Geod

    geod, (lon, lat) = Geod(ellps="WGS84"), KAMPALA
    east = geod.inv(lon, lat, lon + DEGREES, lat)[2]
    north = geod.inv(lon, lat, lon, lat - DEGREES)[2]
    return float(np.sqrt(east * north))


class DiskPredictor(SquarePredictor):
    """A disk of radius ``half`` pixels around the first positive click: edges that simplification changes."""

    def square(self, prompt):
        x, y = prompt.points[prompt.labels == 1][0]
        rr, cc = np.mgrid[0:self._shape[0], 0:self._shape[1]]
        logits = self.half - np.hypot(rr + 0.5 - y, cc + 0.5 - x)
        return MaskPatch(0, 0, logits.astype(np.float32), 0.9)


def test_min_area_is_square_metres_on_a_4326_raster(tmp_path, stub):
    raster, transform = _kampala_raster(tmp_path / "ll.tif")
    points = write_points(tmp_path / "p.gpkg", pixel_centres(transform, [(80, 80), (200, 200)]), crs="EPSG:4326")
    area = segment(raster, points, predictor=stub).layers["instances"]["area_m2"].to_numpy()
    assert area == pytest.approx(400 * _kampala_pixel_metres() ** 2, rel=0.02)  # about 490 m², 4e-8 degrees²
    kept = segment(raster, points, predictor=SquarePredictor(), min_area=0.9 * area.min()).layers
    assert len(kept["instances"]) == 2 and len(kept["skipped"]) == 0
    dropped = segment(raster, points, predictor=SquarePredictor(), min_area=1.1 * area.max()).layers
    assert len(dropped["instances"]) == 0
    assert dropped["skipped"]["reason"].tolist() == ["smaller than --min-area"] * 2


def test_simplify_and_max_hole_area_are_metres_on_any_crs(tmp_path):
    from pointsam_engine.measure import grid_tolerances
    from pointsam_engine.raster import Raster

    metres = _kampala_pixel_metres()
    ll_raster, ll_transform = _kampala_raster(tmp_path / "ll.tif")
    utm_transform = from_origin(500000.0, 4000000.0, metres, metres)  # the same ground pixel, projected
    utm_raster = write_raster(tmp_path / "utm.tif", np.full((3, 300, 300), 120, np.uint8), transform=utm_transform)
    with Raster(str(ll_raster)) as ll, Raster(str(utm_raster)) as utm:
        ll_holes, ll_tolerance = grid_tolerances(ll, 10.0, 2.0)
        utm_holes, utm_tolerance = grid_tolerances(utm, 10.0, 2.0)
        assert utm_tolerance == pytest.approx(2.0, rel=1e-3)  # a metre CRS: metres are map units
        assert ll_tolerance / DEGREES == pytest.approx(utm_tolerance / metres, rel=0.01)  # the same in pixels
        assert ll_holes == pytest.approx(utm_holes, rel=0.01) and utm_holes == pytest.approx(10 / metres ** 2, rel=1e-3)
        assert grid_tolerances(ll, None, None) == (25.0, ll.pixel_size)

    def vertices(raster, transform, crs, simplify):
        points = write_points(tmp_path / f"p{crs[-4:]}.gpkg", pixel_centres(transform, [(150, 150)]), crs=crs)
        geom = segment(raster, points, predictor=DiskPredictor(half=12), simplify=simplify).layers["instances"].geometry
        return shapely.get_num_coordinates(geom.iloc[0])

    raw = vertices(utm_raster, utm_transform, "EPSG:32633", 0)
    utm_count = vertices(utm_raster, utm_transform, "EPSG:32633", 2.0)
    ll_count = vertices(ll_raster, ll_transform, "EPSG:4326", 2.0)
    assert 4 < utm_count < raw  # 2 m simplified the disk's pixel steps but kept its shape
    assert abs(ll_count - utm_count) <= 0.1 * utm_count


class SizedPredictor(SquarePredictor):
    """Squares whose size and logit height follow the click's column: the object clicked further right gets
    a bigger square with higher logits, which covers its left neighbour's click."""

    def square(self, prompt):
        x, y = prompt.points[prompt.labels == 1][0]
        half, height = (12, 9.0) if x > 120 else (3, 1.0)
        r0, c0 = max(int(y) - half, 0), max(int(x) - half, 0)
        logits = np.full((min(int(y) + half, self._shape[0]) - r0, min(int(x) + half, self._shape[1]) - c0), height)
        return MaskPatch(r0, c0, logits.astype(np.float32), 0.9)


def test_a_neighbour_with_higher_logits_cannot_take_an_objects_click(tmp_path):
    """Before, the big square's higher logits took every pixel of the small object, click included, and the
    small object ended as an 'empty mask'; now the click pixel stays its own."""
    raster, transform = _utm_scene(tmp_path)
    cells = [(100, 118), (100, 124)]  # the left click lies inside the right object's square
    points = write_points(tmp_path / "p.gpkg", pixel_centres(transform, cells))
    res = segment(raster, points, predictor=SizedPredictor(), calibration=False)
    inst = res.layers["instances"].sort_values("point_fid")
    assert len(inst) == 2 and res.report["overlaps_after"] == 0
    clicks = [shapely.Point(*grid_to_map(transform, c + 0.5, r + 0.5)) for r, c in cells]
    for geom, click, other in zip(inst.geometry, clicks, clicks[::-1]):
        assert geom.contains(click) and not geom.contains(other)
    assert inst["holds_click"].all() and res.report["clicks_not_held"] == 0


class SpurPredictor(SquarePredictor):
    """A square beside the click joined to the click's pixel by a one-pixel-wide spur: simplification cuts
    the spur, and with it the click."""

    def square(self, prompt):
        x, y = (int(v) for v in prompt.points[prompt.labels == 1][0])
        logits = np.full((20, 30), -1.0, np.float32)
        logits[0:20, 10:30] = 2.0  # the body, to the click's right
        logits[10, 0:10] = 2.0  # the spur, out to the click at (row 10, col 0)
        return MaskPatch(y - 10, x, logits, 0.9)


def test_an_outline_holds_its_click_after_simplification(tmp_path):
    raster, transform = _utm_scene(tmp_path)
    cells = [(100, 100)]
    points = write_points(tmp_path / "p.gpkg", pixel_centres(transform, cells))
    click = shapely.Point(*grid_to_map(transform, 100.5, 100.5))
    res = segment(raster, points, predictor=SpurPredictor(), simplify=3.0)
    geom = res.layers["instances"].geometry.iloc[0]
    assert geom.contains(click) and res.layers["instances"]["holds_click"].iloc[0]


class MissPredictor(SquarePredictor):
    """A square that misses the click: SAM's mask is not always where the analyst clicked."""

    def square(self, prompt):
        x, y = (int(v) for v in prompt.points[prompt.labels == 1][0])
        return MaskPatch(y + 5, x + 5, np.ones((8, 8), np.float32), 0.9)


def test_a_mask_that_misses_its_click_is_flagged_and_counted(tmp_path):
    raster, transform = _utm_scene(tmp_path)
    points = write_points(tmp_path / "p.gpkg", pixel_centres(transform, [(100, 100), (200, 300)]))
    res = segment(raster, points, predictor=MissPredictor())
    assert res.layers["instances"]["holds_click"].tolist() == [False, False]
    assert res.report["clicks_not_held"] == 2
