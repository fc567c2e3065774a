import numpy as np
import shapely
from rasterio.transform import from_origin
from scipy import ndimage

from pointsam_engine import segment
from pointsam_engine.masks import MaskPatch
from pointsam_engine.vectorize import overlapping
from tests.conftest import SquarePredictor, grid_to_map, pixel_centres, write_points, write_raster

TRANSFORM = from_origin(500000.0, 4000000.0, 0.5, 0.5)


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
    res = segment(raster, points, predictor=FloodPredictor(chip_size=256), calibration=False)
    inst = res.layers["instances"].sort_values("point_fid")
    big, small = inst.geometry.values
    truth = _pixels_box(200, 160, 800, 640)
    # a 256-pixel chip shows at most 23 % of the roof; the 4x coarser chip shows all of it (less the blended rim)
    assert shapely.area(shapely.intersection(big, truth)) / shapely.area(shapely.union(big, truth)) > 0.95
    assert small.symmetric_difference(_pixels_box(400, 700, 440, 740)).area < 1e-6
    assert res.report["coarse_retries"] == 1 and res.report["coarse_kept"] == 1
    assert overlapping(inst.geometry.values) == [] and inst["holds_click"].all()


def test_objects_within_their_chip_are_not_tried_again(tmp_path):
    raster, points = _scene(tmp_path)
    stub = FloodPredictor(chip_size=1024)  # a chip that holds the big roof whole
    res = segment(raster, points, predictor=stub, calibration=False)
    assert res.report["coarse_retries"] == 0 and res.report["encoder_passes"] == len(stub.chips)
    area = res.layers["instances"].sort_values("point_fid").geometry.values[0].area
    assert abs(area - 600 * 480 * 0.25) < 1e-6


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
