"""Wall directions from the imagery, and footprints regularized along them, on scenes whose walls are known."""

import numpy as np
import pytest
import shapely
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.features import rasterize
from rasterio.transform import from_origin
from shapely import affinity

from pointsam_engine.config import SegmentConfig
from pointsam_engine.masks import MaskPatch
from pointsam_engine.raster import Raster, compute_normalization
from pointsam_engine.vectorize import to_map, trace
from pointsam_engine.walls import direction_of, wall_directions
from tests.conftest import SquarePredictor, pixel_centres, write_points, write_raster

SIZE = 160
METRES = (from_origin(500000.0, 4000000.0, 0.3, 0.3), "EPSG:32633")
# Banepa's chips: lon/lat pixels, 0.3 m square on the ground, so a degree of longitude spans fewer pixels
DEGREES = (from_origin(85.52, 27.63, 3.05e-6, 2.7e-6), "EPSG:4326")


def roof(angle: float, width: float = 42, height: float = 38):
    """A roof turned ``angle`` degrees in pixel coordinates (rows down) about the raster's centre."""
    c = SIZE / 2
    return affinity.rotate(shapely.box(c - width / 2, c - height / 2, c + width / 2, c + height / 2), angle)


def leaky_blob(shape):
    """What a model gives for a roof it barely sees: its corners rounded off and a strip of yard along the diagonal."""
    c = SIZE / 2
    leak = affinity.rotate(shapely.box(c, c - 4, c + 37, c + 4), 45, origin=(c, c))
    return shape.buffer(-17).buffer(17).union(leak)


def scene(path, shape, transform_crs=METRES, leak=None):
    """A bright roof on darker ground (and a faint yard where ``leak`` lies), three bands."""
    image = np.full((SIZE, SIZE), 40, np.uint8)
    if leak is not None:
        image[rasterize([(leak, 1)], out_shape=image.shape).astype(bool)] = 50
    image[rasterize([(shape, 1)], out_shape=image.shape).astype(bool)] = 200
    transform, crs = transform_crs
    return write_raster(path, np.stack([image] * 3), crs=crs, transform=transform)


def walls_of(path, polygons):
    with Raster(str(path)) as ras:
        cfg = SegmentConfig()
        return wall_directions(ras, compute_normalization(ras, cfg.stretch, cfg.sar_db), polygons)


def traced(shape):
    return trace(rasterize([(shape, 1)], out_shape=(SIZE, SIZE)).astype(bool), 0, 0)


def ground_directions(geom, crs) -> np.ndarray:
    """The direction (degrees, mod 90) of each edge of ``geom`` on the ground: in a transverse Mercator
    centred on it, where a right angle on the ground is one in coordinates."""
    x, y = geom.centroid.coords[0]
    if ProjCRS.from_user_input(crs).is_geographic:
        local = f"+proj=tmerc +lat_0={y} +lon_0={x} +ellps=WGS84 +units=m"
        move = Transformer.from_crs(crs, local, always_xy=True)
        geom = shapely.transform(geom, lambda xy: np.column_stack(move.transform(xy[:, 0], xy[:, 1])))
    edges = np.diff(np.asarray(geom.exterior.coords), axis=0)
    return np.degrees(np.arctan2(edges[:, 1], edges[:, 0])) % 90


def off(directions, expected: float) -> np.ndarray:
    return np.abs((np.asarray(directions) - expected + 45) % 90 - 45)


@pytest.mark.parametrize("angle", [0, 20, 37, 65])
def test_the_walls_of_a_turned_roof_run_its_way_even_where_its_mask_is_a_leaky_blob(tmp_path, angle):
    shape = roof(angle)
    path = scene(tmp_path / "roof.tif", shape, leak=leaky_blob(shape))
    (segment,) = walls_of(path, [traced(leaky_blob(shape))])
    assert off([direction_of(segment)], angle)[0] < 1  # pixel coordinates: rows down, as the roof was turned
    assert segment.length == pytest.approx(1.0)


def test_no_direction_where_the_image_shows_no_edge_or_there_is_no_object(tmp_path):
    flat = write_raster(tmp_path / "flat.tif", np.full((3, SIZE, SIZE), 90, np.uint8), transform=METRES[0])
    assert list(walls_of(flat, [traced(roof(20)), None])) == [None, None]


class BlobPredictor(SquarePredictor):
    """Stand-in for SAM that gives the same leaky blob (raster pixels) for every click, wherever its chip lies."""

    def __init__(self, blob):
        super().__init__()
        self.blob = rasterize([(blob, 1)], out_shape=(SIZE, SIZE)).astype(bool)

    def square(self, prompt):
        self.offset = np.round(prompt.points[0] - SIZE / 2).astype(int)  # the raster's centre on the chip
        logits = np.where(self.blob, 4.0, -4.0).astype(np.float32)
        return MaskPatch(int(self.offset[1]), int(self.offset[0]), logits, 0.9)


@pytest.mark.parametrize("transform_crs", [METRES, DEGREES], ids=["metres", "degrees"])
def test_segment_regularizes_a_leaky_blob_along_the_walls_in_the_image(tmp_path, transform_crs):
    # the blob's own best rectangle lies 14° off the roof; the image's edges give the roof's direction
    shape = roof(20)
    blob = leaky_blob(shape)
    transform, crs = transform_crs
    raster = scene(tmp_path / "roof.tif", shape, transform_crs, leak=blob)
    points = write_points(tmp_path / "clicks.gpkg", pixel_centres(transform, [(SIZE // 2, SIZE // 2)]), crs=crs)
    from pointsam_engine import segment

    inst = segment(raster, points, None, predictor=BlobPredictor(blob), regularize="buildings",
                   calibration=False).layers["instances"]
    (out,) = inst.geometry.values
    truth = to_map([shape], transform)[0]
    assert np.all(off(ground_directions(out, crs), ground_directions(truth, crs)[0]) < 1)
    assert out.intersection(truth).area / out.union(truth).area > 0.9
