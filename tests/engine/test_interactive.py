"""The click path (``/v1/predict``): negative clicks trim the object instead of cutting holes, box prompts."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from fastapi.testclient import TestClient

from pointsam_engine import segment
from pointsam_engine.config import SegmentConfig
from pointsam_engine.demo.scenes import generate
from pointsam_engine.errors import PointsError
from pointsam_engine.interactive import ClickSegmenter, _prompt_chip, trimmed_mask
from pointsam_engine.masks import MaskPatch

from ..conftest import SquarePredictor, grid_to_map, write_points

TOKEN = "test-token"


class HolePredictor(SquarePredictor):
    """SAM's habit on a negative click inside an object: the square with a hole around each negative, and a
    detached speck beside the square (a second part that holds no click)."""

    def square(self, prompt):
        patch = super().square(prompt)
        rows, cols = np.mgrid[0:patch.shape[0], 0:patch.shape[1]]
        logits = patch.logits.copy()
        for nx, ny in prompt.points[prompt.labels == 0]:
            logits[np.hypot(cols + patch.col0 + 0.5 - nx, rows + patch.row0 + 0.5 - ny) < 4] = -1.0
        grown = np.full((patch.shape[0], patch.shape[1] + 6), -1.0, np.float32)
        grown[:, :patch.shape[1]] = logits
        grown[2:5, -3:] = 1.0  # the speck, two columns right of the square
        return MaskPatch(patch.row0, patch.col0, grown, patch.score)


class BoxPredictor(SquarePredictor):
    """SAM on a box prompt: the box, leaking three pixels past each side; records the prompts."""

    def square(self, prompt):
        if prompt.box is None:
            return super().square(prompt)
        x0, y0, x1, y1 = np.round(prompt.box).astype(int)
        r0, c0 = max(y0 - 3, 0), max(x0 - 3, 0)
        return MaskPatch(r0, c0, np.ones((y1 + 3 - r0, x1 + 3 - c0), np.float32), 0.9)


class DiscPredictor(SquarePredictor):
    """SAM's soft edge: logits falling off with the distance from a point beside the click (x + 0.3, y - 0.2),
    positive within ``half`` pixels of it."""

    def square(self, prompt):
        x, y = prompt.points[prompt.labels == 1][0]
        rows, cols = np.mgrid[0:self._shape[0], 0:self._shape[1]] + 0.5
        return MaskPatch(0, 0, (self.half - np.hypot(cols - x - 0.3, rows - y + 0.2)).astype(np.float32), 0.9)


def _square_patch(hole_at=None, hole_radius=4):
    logits = np.full((40, 40), -1.0, np.float32)
    logits[5:35, 5:35] = 1.0
    if hole_at is not None:
        rows, cols = np.mgrid[0:40, 0:40]
        logits[np.hypot(cols + 0.5 - hole_at[0], rows + 0.5 - hole_at[1]) < hole_radius] = -1.0
    logits[0:3, 37:40] = 1.0  # a detached part
    return MaskPatch(100, 200, logits, 0.9)


def test_a_hole_around_a_negative_click_is_filled_and_detached_parts_go():
    patch = _square_patch(hole_at=(20.5, 20.5))
    positive, negative = np.array([[210.5, 110.5]]), np.array([[220.5, 120.5]])
    assert not patch.mask[20, 20], "the stub mask has the hole SAM cuts"
    mask = trimmed_mask(patch, positive, negative, max_hole_px=0)
    assert mask[20, 20], "the hole around the negative click is filled"
    assert mask[10, 10], "the positive click's part is kept"
    assert not mask[1, 38], "the part without a positive click is dropped"
    assert mask.sum() == 30 * 30


def test_a_hole_far_from_every_negative_follows_max_hole_area():
    patch = _square_patch(hole_at=(20.5, 20.5))
    positive, far_negative = np.array([[210.5, 110.5]]), np.array([[236.5, 139.5]])
    mask = trimmed_mask(patch, positive, far_negative, max_hole_px=0)
    assert not mask[20, 20], "a hole no negative made is the object's own (a courtyard) and stays"


def _scene_click(blocks_scene, index):
    raster, _, transform, centres = blocks_scene
    row, col = centres[index]
    return str(raster), transform, row, col


def _xy(transform, col, row):
    return list(grid_to_map(transform, col, row))


def test_negative_inside_an_object_gives_one_part_without_a_hole(blocks_scene):
    raster, transform, row, col = _scene_click(blocks_scene, 40)
    segmenter = ClickSegmenter(HolePredictor(half=12))
    positive, negative = _xy(transform, col + 0.5, row + 0.5), _xy(transform, col + 6.5, row + 0.5)
    result = segmenter.predict(raster, [positive], [negative])
    assert result.polygon.geom_type == "Polygon", "one part: the speck holding no click is gone"
    assert len(result.polygon.interiors) == 0, "no hole around the negative click"
    assert result.polygon.contains(shapely.Point(positive))


def test_negative_at_the_edge_trims_the_object(blocks_scene):
    raster, transform, row, col = _scene_click(blocks_scene, 40)
    segmenter = ClickSegmenter(HolePredictor(half=12))
    positive, negative = _xy(transform, col + 0.5, row + 0.5), _xy(transform, col + 10.5, row + 0.5)
    without = segmenter.predict(raster, [positive])
    trimmed = segmenter.predict(raster, [positive], [negative])
    assert trimmed.polygon.geom_type == "Polygon" and len(trimmed.polygon.interiors) == 0
    assert trimmed.polygon.contains(shapely.Point(positive))
    assert not trimmed.polygon.contains(shapely.Point(negative))
    assert trimmed.polygon.area < without.polygon.area


def test_a_box_alone_reaches_the_model_in_chip_pixels_and_bounds_the_object(blocks_scene):
    raster, _, transform, centres = blocks_scene
    row, col = centres[40]  # the block spans rows row-20..row+20, columns col-25..col+25
    (xmin, ymax), (xmax, ymin) = grid_to_map(transform, col - 25, row - 20), grid_to_map(transform, col + 25, row + 20)
    predictor = BoxPredictor()
    result = ClickSegmenter(predictor).predict(raster, [], box=[xmin, ymin, xmax, ymax])
    prompt = predictor.calls[-1][0]
    row0, col0, _ = result.chip
    np.testing.assert_allclose(prompt.box, [col - 25 - col0, row - 20 - row0, col + 25 - col0, row + 20 - row0])
    assert len(prompt.points) == 0
    block = shapely.box(xmin, ymin, xmax, ymax)
    assert result.polygon.symmetric_difference(block).area < 0.01 * block.area, "the leak past the box is cut"


@pytest.mark.parametrize("seed", range(20))
def test_the_chip_holds_every_click_and_the_whole_box(seed):
    rng = np.random.default_rng(seed)
    size, grid = 256, (900, 700)
    width, height = rng.uniform(5, size, 2)
    x0, y0 = rng.uniform(0, grid[1] - width), rng.uniform(0, grid[0] - height)
    box = np.array([x0, y0, x0 + width, y0 + height])
    clicks = np.column_stack([rng.uniform(box[0], box[2], 2), rng.uniform(box[1], box[3], 2)])
    row0, col0 = _prompt_chip(clicks, box, grid, size)
    assert col0 <= box[0] and box[2] <= col0 + size and row0 <= box[1] and box[3] <= row0 + size
    assert 0 <= row0 <= grid[0] - size and 0 <= col0 <= grid[1] - size


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from pointsam_engine.api.app import create_app
    from pointsam_engine.api.engine import Engine

    scene = generate("buildings", tmp_path_factory.mktemp("interactive_scene"), size=384, seed=41077)
    engine = Engine(SegmentConfig())
    with TestClient(create_app(engine, TOKEN, allowed_hosts=("testserver",)),
                    headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client, scene


def _building(scene, index):
    points, truth = gpd.read_file(scene["points"]), gpd.read_file(scene["truth"])
    click = points.geometry.iloc[index]
    return click, truth[truth.contains(click)].geometry.iloc[0]


def test_a_box_with_a_click_gives_the_object_inside_the_box(api):
    client, scene = api
    click, truth = _building(scene, 3)
    box = list(truth.buffer(1.0).bounds)
    answer = client.post("/v1/predict", json={"raster": str(scene["raster"]), "box": box,
                                              "positive": [[click.x, click.y]]})
    assert answer.status_code == 200, answer.text
    polygon = shapely.geometry.shape(answer.json()["object"]["geometry"])
    assert polygon.contains(click) and shapely.box(*box).buffer(1e-6).contains(polygon)
    assert shapely.intersection(polygon, truth).area / shapely.union(polygon, truth).area > 0.5


def test_a_box_alone_answers_a_polygon_inside_it(api):
    """The bundled model never saw a box in training, so only the route and the bounds are checked here."""
    client, scene = api
    _, truth = _building(scene, 15)
    box = list(truth.buffer(1.0).bounds)
    answer = client.post("/v1/predict", json={"raster": str(scene["raster"]), "box": box})
    if answer.status_code == 422:
        assert "found no object" in answer.json()["message"]
        return
    assert answer.status_code == 200, answer.text
    assert shapely.box(*box).buffer(1e-6).contains(shapely.geometry.shape(answer.json()["object"]["geometry"]))


def test_negative_click_inside_a_building_leaves_one_part_holding_the_click(api):
    client, scene = api
    click, truth = _building(scene, 6)
    inner = truth.buffer(-1.0)
    negative = inner.exterior.interpolate(0.5, normalized=True)  # inside, near the far edge
    answer = client.post("/v1/predict", json={"raster": str(scene["raster"]), "positive": [[click.x, click.y]],
                                              "negative": [[negative.x, negative.y]]})
    assert answer.status_code == 200, answer.text
    polygon = shapely.geometry.shape(answer.json()["object"]["geometry"])
    assert polygon.geom_type == "Polygon" and len(polygon.interiors) == 0
    assert polygon.contains(click)


@pytest.mark.parametrize("box, says", [
    ([10.0, 20.0, 5.0, 30.0], "is empty or inverted"),
    ([10.0, 20.0, 10.0, 30.0], "is empty or inverted"),
    ([10.0, 20.0, 30.0], "box"),
])
def test_a_bad_box_is_refused_with_one_line(api, box, says):
    client, scene = api
    answer = client.post("/v1/predict", json={"raster": str(scene["raster"]), "box": box})
    assert answer.status_code == 422
    message = answer.json()["message"]
    assert says in message and "\n" not in message


def test_a_box_off_the_raster_and_no_prompt_at_all_are_refused(api):
    client, scene = api
    outside = client.post("/v1/predict", json={"raster": str(scene["raster"]), "box": [0, 0, 10, 10]})
    assert outside.status_code == 422 and "the box lies outside" in outside.json()["message"]
    nothing = client.post("/v1/predict", json={"raster": str(scene["raster"])})
    assert nothing.status_code == 422 and "no positive click and no box" in nothing.json()["message"]


def test_a_box_smaller_than_a_pixel_is_refused_with_one_line(blocks_scene):
    raster, _, transform, centres = blocks_scene
    row, col = centres[40]
    xmin, ymax = grid_to_map(transform, col + 0.6, row + 0.6)
    xmax, ymin = grid_to_map(transform, col + 0.9, row + 0.9)
    with pytest.raises(PointsError, match="found no object"):
        ClickSegmenter(BoxPredictor()).predict(raster, [], box=[xmin, ymin, xmax, ymax])


def test_clicks_on_a_chip_already_encoded_do_not_read_the_raster_again(blocks_scene, tiny_model, monkeypatch):
    from pointsam_engine.raster import Raster
    from pointsam_engine.sam.model import load_model
    from pointsam_engine.sam.predict import ChipPredictor

    reads = []
    read_chip = Raster.read_chip
    monkeypatch.setattr(Raster, "read_chip", lambda self, *args: reads.append(args) or read_chip(self, *args))
    segmenter = ClickSegmenter(ChipPredictor(load_model(str(tiny_model), device="cpu")))
    raster, _, transform, centres = blocks_scene
    (row, col) = centres[0]
    first = segmenter.predict(str(raster), [grid_to_map(transform, col + 0.5, row + 0.5)])
    again = segmenter.predict(str(raster), [grid_to_map(transform, col + 1.5, row + 0.5)])
    assert first.encoded and not again.encoded
    assert len(reads) == 1


def test_a_click_outline_follows_the_logits_edge_as_a_segment_run_traces_it(blocks_scene, tmp_path):
    """The click path traces the sub-pixel edge, not the pixel staircase, and gives the outline a segment run
    gives the same object (within the rounding of float16 logits)."""
    raster, _, transform, centres = blocks_scene
    row, col = centres[40]
    click = grid_to_map(transform, col + 0.5, row + 0.5)
    circle = shapely.Point(grid_to_map(transform, col + 0.8, row + 0.3)).buffer(15 * 0.5, quad_segs=256)
    exact = ClickSegmenter(DiscPredictor(half=15)).predict(str(raster), [click], simplify=0).polygon
    assert exact.hausdorff_distance(circle.exterior) < 0.05 * 0.5  # the staircase: 0.7 pixel
    clicked = ClickSegmenter(DiscPredictor(half=15)).predict(str(raster), [click]).polygon
    points = write_points(tmp_path / "one.gpkg", [click])
    run = segment(str(raster), points, predictor=DiscPredictor(half=15), calibration=False)
    # the same edge; a run holds logits as float16 while chips wait to be settled, which moves it a little
    assert clicked.hausdorff_distance(run.layers["instances"].geometry.values[0]) < 0.05 * 0.5
