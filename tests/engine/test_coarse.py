import numpy as np
import pytest
import shapely
import shapely.affinity
from rasterio.transform import from_origin
from scipy import ndimage

from pointsam_engine import segment
from pointsam_engine.calibration import resolve_overlaps
from pointsam_engine.chip_loop import ChipRun
from pointsam_engine.coarse import _replace
from pointsam_engine.masks import MaskPatch
from pointsam_engine.vectorize import overlapping, simplify_coverage, trace_logits
from tests.conftest import SquarePredictor, grid_to_map, pixel_centres, write_points, write_raster

TRANSFORM = from_origin(500000.0, 4000000.0, 0.5, 0.5)
CORNERS_M2 = 4 * 0.5 * 0.5 ** 2 * 0.25  # the four half-pixel corners a sub-pixel outline cuts off a flat mask


class FloodPredictor(SquarePredictor):
    """Stand-in for SAM on flat-coloured scenes: the 4-connected region of the click's colour on the chip,
    so a mask stops where the object or the chip ends."""

    def set_chip(self, image, valid=None, key=None) -> bool:
        self._image = image
        return super().set_chip(image, valid, key)

    def square(self, prompt):
        x, y = (int(v) for v in prompt.points[prompt.labels == 1][0])
        same = (self._image == self._image[y, x]).all(axis=2)
        labels, _ = ndimage.label(same)
        region = labels == labels[y, x]
        return MaskPatch(0, 0, np.where(region, 4.0, -4.0).astype(np.float32), 0.9)


def _scene(tmp_path):
    """A 1200² raster: a 600 x 480 pixel roof (larger than a 256-pixel chip), a small roof beside it."""
    data = np.full((3, 1200, 1200), 40, np.uint8)
    data[:, 200:800, 160:640] = 200
    data[:, 400:440, 700:740] = 120
    raster = write_raster(tmp_path / "big.tif", data, transform=TRANSFORM)
    points = write_points(tmp_path / "p.gpkg", pixel_centres(TRANSFORM, [(500, 400), (420, 720)]))
    return raster, points


def _pixels_box(r0, c0, r1, c1):
    (x0, y0), (x1, y1) = grid_to_map(TRANSFORM, c0, r0), grid_to_map(TRANSFORM, c1, r1)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def test_an_object_larger_than_its_chip_is_decoded_again_on_a_coarser_grid(tmp_path):
    raster, points = _scene(tmp_path)
    stub = FloodPredictor(chip_size=256)
    res = segment(raster, points, predictor=stub, calibration=False)
    assert res.report["encoder_passes"] == len(stub.chips) > res.report["chips"]  # the coarse chip counts too
    inst = res.layers["instances"].sort_values("point_fid")
    big, small = inst.geometry.values
    truth = _pixels_box(200, 160, 800, 640)
    # a 256-pixel chip shows at most 23 % of the roof; the 4x coarser chip shows all of it (less the blended rim)
    assert shapely.area(shapely.intersection(big, truth)) / shapely.area(shapely.union(big, truth)) > 0.95
    # the pixels' box less its corners, which the sub-pixel outline cuts by half a pixel each way
    assert small.symmetric_difference(_pixels_box(400, 700, 440, 740)).area == pytest.approx(CORNERS_M2)
    assert res.report["coarse_retries"] == 1 and res.report["coarse_kept"] == 1
    assert overlapping(inst.geometry.values) == [] and inst["holds_click"].all()


def test_objects_within_their_chip_are_not_tried_again(tmp_path):
    raster, points = _scene(tmp_path)
    stub = FloodPredictor(chip_size=1024)  # a chip that holds the big roof whole
    res = segment(raster, points, predictor=stub, calibration=False)
    assert res.report["coarse_retries"] == 0 and res.report["encoder_passes"] == len(stub.chips)
    area = res.layers["instances"].sort_values("point_fid").geometry.values[0].area
    assert abs(area - (600 * 480 * 0.25 - CORNERS_M2)) < 1e-6


def test_a_coarse_outline_gives_way_to_a_neighbours_fine_one(tmp_path):
    """A small roof of the big roof's colour inside its outline's reach: two clicks, two objects, no overlap."""
    data = np.full((3, 1200, 1200), 40, np.uint8)
    data[:, 200:800, 160:640] = 200
    raster = write_raster(tmp_path / "big.tif", data, transform=TRANSFORM)
    points = write_points(tmp_path / "p.gpkg", pixel_centres(TRANSFORM, [(500, 400), (210, 170)]))
    res = segment(raster, points, predictor=FloodPredictor(chip_size=256), calibration=False)
    inst = res.layers["instances"]
    assert len(inst) == 2 and overlapping(inst.geometry.values) == []
    assert inst["holds_click"].all()


class LeakyFloodPredictor(FloodPredictor):
    """The click colour's region (logit 4), leaking six pixels onto neighbouring roofs (logit 1), not onto the
    ground; the brighter roof scores higher."""

    def square(self, prompt):
        patch = super().square(prompt)
        region = patch.logits > 0
        brightness = self._image.mean(axis=2)
        roofs = brightness > np.median(brightness)  # the ground covers most of the chip
        ring = ndimage.binary_dilation(region, iterations=6) & ~region & roofs
        x, y = (int(v) for v in prompt.points[prompt.labels == 1][0])
        score = 0.5 + float(self._image[y, x].mean()) / 1000
        return MaskPatch(0, 0, np.where(region, 4.0, np.where(ring, 1.0, -4.0)).astype(np.float32), score)


def test_two_objects_larger_than_their_chips_share_pixels_by_the_higher_logit(tmp_path):
    """Two touching roofs, each larger than a chip, whose coarse masks leak onto each other: the wall lies where
    each roof ends (its own pixels hold the higher logit), not along the higher-scored mask's leak."""
    data = np.full((3, 1200, 1200), 40, np.uint8)
    data[:, 200:800, 160:500] = 200
    data[:, 200:800, 500:840] = 150
    raster = write_raster(tmp_path / "two.tif", data, transform=TRANSFORM)
    points = write_points(tmp_path / "p.gpkg", pixel_centres(TRANSFORM, [(500, 330), (500, 670)]))
    res = segment(raster, points, predictor=LeakyFloodPredictor(chip_size=256), calibration=False)
    assert res.report["coarse_kept"] == 2
    inst = res.layers["instances"].sort_values("point_fid")
    for roof, truth in zip(inst.geometry.values, [_pixels_box(200, 160, 800, 500), _pixels_box(200, 500, 800, 840)]):
        assert shapely.area(shapely.intersection(roof, truth)) / shapely.area(shapely.union(roof, truth)) > 0.97
    assert overlapping(inst.geometry.values) == [] and inst["holds_click"].all()


def test_a_coarse_outline_cut_against_fine_neighbours_leaves_a_coverage_that_simplifies_without_overlaps():
    """Two fine discs sharing a wall, and a slanted coarse outline across both: the cut adds vertices where
    the edges cross; the discs take them too, so the three stay a coverage (walls vertex for vertex)."""
    yy, xx = np.mgrid[0:80, 0:100] + 0.5
    discs = [MaskPatch(0, 0, (14 - np.hypot(xx - 30.3, yy - 40.1)).astype(np.float16), 0.9),
             MaskPatch(0, 0, (16 - np.hypot(xx - 57.6, yy - 38.7)).astype(np.float16), 0.9)]
    resolve_overlaps(discs)
    fine = trace_logits({k: (p, p.mask) for k, p in enumerate(discs)})
    slab = shapely.affinity.rotate(shapely.box(20.13, 30.71, 90.37, 61.29), 17.3, origin="centroid")
    run = ChipRun([fine[0], fine[1], None], np.array([0.9, 0.9, 0.5]), np.zeros(3, bool), np.zeros(3, int))
    _replace(run, {2: (slab, 0.8)})
    geoms = np.array(run.polygons, dtype=object)
    assert run.coarse.tolist() == [False, False, True] and shapely.coverage_is_valid(geoms)
    assert geoms[2].area == pytest.approx(slab.difference(shapely.union(fine[0], fine[1])).area)
    assert shapely.symmetric_difference(geoms[0], fine[0]).area < 1e-9  # the fine outline only gained vertices
    assert overlapping(simplify_coverage(geoms, 1.0)) == []


def test_coarse_outlines_give_way_to_every_fine_outline_kept_by_an_object_whose_coarse_one_went():
    """Object 1's coarse outline lies inside a fine neighbour: 1 keeps its fine outline, inside which 2's coarse
    outline lies: 2 keeps its fine outline too, which 3's coarse outline must then give way to."""
    box = shapely.box
    fine = [box(0, 0, 10, 10), box(10, 0, 20, 10), box(20, 0, 30, 10), box(40, 0, 50, 10)]
    run = ChipRun(list(fine), np.full(4, 0.5), np.zeros(4, bool), np.zeros(4, int))
    _replace(run, {1: (box(1, 1, 2, 2), 0.9), 2: (box(11, 1, 12, 2), 0.9), 3: (box(22, 0, 45, 10), 0.9)})
    assert run.coarse.tolist() == [False, False, False, True]
    assert run.polygons[:3] == fine[:3] and run.polygons[3].equals(box(30, 0, 45, 10))
    assert overlapping(np.array(run.polygons, dtype=object)) == []
