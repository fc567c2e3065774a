"""Wall directions from the imagery, and footprints regularized along them, on scenes whose walls are known."""

import numpy as np
import pytest
import shapely
from pyproj import Transformer
from rasterio.features import rasterize
from rasterio.transform import from_origin
from shapely import affinity

from pointsam_engine import segment
from pointsam_engine.config import SegmentConfig
from pointsam_engine.masks import MaskPatch
from pointsam_engine.raster import Raster, compute_normalization
from pointsam_engine.regularize import step_directions, turn
from pointsam_engine.vectorize import to_map, trace
from pointsam_engine.walls import wall_directions
from tests.conftest import SquarePredictor, pixel_centres, write_points, write_raster

SIZE = 160
FRAMES = {
    "metres": (from_origin(500000.0, 4000000.0, 0.3, 0.3), "EPSG:32633"),
    # Banepa's chips: lon/lat pixels square on the ground (a degree of longitude spans fewer metres)
    "degrees at 27N": (from_origin(85.52, 27.63, 3.05e-6, 2.7e-6), "EPSG:4326"),
    # square in degrees, so twice as tall as wide on the ground: a right angle there is not one in pixels
    "square degrees at 60N": (from_origin(10.0, 60.0, 2.7e-6, 2.7e-6), "EPSG:4326"),
}


class Ground:
    """A raster's grid and the ground around its centre (a transverse Mercator there, metres east and north)."""

    def __init__(self, frame):
        self.transform, self.crs = FRAMES[frame]
        x, y = self.transform @ (SIZE / 2, SIZE / 2)
        lon, lat = Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True).transform(x, y)
        local = f"+proj=tmerc +lat_0={lat} +lon_0={lon} +ellps=WGS84 +units=m"
        self._to = Transformer.from_crs(self.crs, local, always_xy=True)
        self._back = Transformer.from_crs(local, self.crs, always_xy=True)

    def of_map(self, geom):
        return shapely.transform(geom, lambda xy: np.column_stack(self._to.transform(xy[:, 0], xy[:, 1])))

    def to_pixels(self, geom):
        """A ground geometry (metres from the centre) in the raster's pixel coordinates."""
        mapped = shapely.transform(geom, lambda xy: np.column_stack(self._back.transform(xy[:, 0], xy[:, 1])))
        return affinity.affine_transform(mapped, (~self.transform).to_shapely())

    def directions(self, geom) -> np.ndarray:
        """The ground direction (degrees, mod 90) of each edge of a map geometry (a line or a polygon's exterior)."""
        ground = self.of_map(geom)
        line = ground.exterior if ground.geom_type == "Polygon" else ground
        return step_directions(np.diff(np.asarray(line.coords), axis=0))


def roof(ground: Ground, angle: float):
    """A 12.6 x 11.4 m roof at the raster's centre, its walls turned ``angle`` degrees from east on the ground,
    in pixel coordinates."""
    return ground.to_pixels(affinity.rotate(shapely.box(-6.3, -5.7, 6.3, 5.7), angle, origin=(0, 0)))


def leaky_blob(shape):
    """What a model gives for a roof it barely sees: its corners rounded off and a strip of yard along the diagonal."""
    c = SIZE / 2
    leak = affinity.rotate(shapely.box(c, c - 4, c + 37, c + 4), 45, origin=(c, c))
    return shape.buffer(-17).buffer(17).union(leak)


def scene(path, ground: Ground, shape, leak=None):
    """A bright roof on darker ground (and a faint yard where ``leak`` lies), three bands."""
    image = np.full((SIZE, SIZE), 40, np.uint8)
    if leak is not None:
        image[rasterize([(leak, 1)], out_shape=image.shape).astype(bool)] = 50
    image[rasterize([(shape, 1)], out_shape=image.shape).astype(bool)] = 200
    return write_raster(path, np.stack([image] * 3), crs=ground.crs, transform=ground.transform)


def walls_of(path, polygons):
    with Raster(str(path)) as ras:
        cfg = SegmentConfig()
        return wall_directions(ras, compute_normalization(ras, cfg.stretch, cfg.sar_db), polygons)


def traced(shape):
    return trace(rasterize([(shape, 1)], out_shape=(SIZE, SIZE)).astype(bool), 0, 0)


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("angle", [0, 20, 37, 65])
def test_the_walls_of_a_turned_roof_run_its_way_on_the_ground_even_where_its_mask_is_a_leaky_blob(tmp_path, angle,
                                                                                                 frame):
    ground = Ground(frame)
    shape = roof(ground, angle)
    path = scene(tmp_path / "roof.tif", ground, shape, leak=leaky_blob(shape))
    (segment,) = walls_of(path, [traced(leaky_blob(shape))])
    assert abs(turn(ground.directions(segment)[0], angle)) < 1


def test_a_large_object_read_at_every_nth_pixel_keeps_its_direction(tmp_path, monkeypatch):
    monkeypatch.setattr("pointsam_engine.walls.MAX_WINDOW_PX", 40)  # the roof's window, ~70 px, read at every 2nd
    ground = Ground("square degrees at 60N")
    shape = roof(ground, 37)
    path = scene(tmp_path / "roof.tif", ground, shape, leak=leaky_blob(shape))
    (segment,) = walls_of(path, [traced(leaky_blob(shape))])
    assert abs(turn(ground.directions(segment)[0], 37)) < 1.5


def test_no_direction_where_the_image_shows_none_or_there_is_no_object(tmp_path):
    ground = Ground("metres")
    flat = write_raster(tmp_path / "flat.tif", np.full((3, SIZE, SIZE), 90, np.uint8), transform=ground.transform)
    noise = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE), dtype=np.uint8)
    noisy = write_raster(tmp_path / "noise.tif", np.stack([noise] * 3), transform=ground.transform)
    shape = traced(roof(ground, 20))
    assert list(walls_of(flat, [shape, None])) == [None, None]
    assert list(walls_of(noisy, [shape])) == [None]  # gradients every way: no one direction


class BlobPredictor(SquarePredictor):
    """Stand-in for SAM that gives the same leaky blob (raster pixels) for every click, wherever its chip lies."""

    def __init__(self, blob):
        super().__init__()
        self.blob = rasterize([(blob, 1)], out_shape=(SIZE, SIZE)).astype(bool)

    def square(self, prompt):
        col0, row0 = np.floor(prompt.points[0]).astype(int) - SIZE // 2  # the raster's origin on the chip
        return MaskPatch(int(row0), int(col0), np.where(self.blob, 4.0, -4.0).astype(np.float32), 0.9)


@pytest.mark.parametrize("frame", FRAMES)
def test_segment_regularizes_a_leaky_blob_along_the_walls_in_the_image(tmp_path, frame):
    # the blob's own best rectangle lies 14° off the roof; the image's edges give the roof's direction
    ground = Ground(frame)
    shape = roof(ground, 20)
    blob = leaky_blob(shape)
    raster = scene(tmp_path / "roof.tif", ground, shape, leak=blob)
    points = write_points(tmp_path / "clicks.gpkg", pixel_centres(ground.transform, [(SIZE // 2, SIZE // 2)]),
                          crs=ground.crs)
    inst = segment(raster, points, None, predictor=BlobPredictor(blob), regularize="buildings",
                   calibration=False).layers["instances"]
    (out,) = inst.geometry.values
    truth = to_map([shape], ground.transform)[0]
    assert np.all(np.abs(turn(ground.directions(out), 20)) < 1)
    assert out.intersection(truth).area / out.union(truth).area > 0.9
