"""The merge settles objects that meet across a raster edge: the lower score gives way, then each object takes
back its click pixel (on its own raster's grid) from the neighbour that covered it, and ``holds_click`` is
recomputed; boxes and areas follow."""

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from pointsam_engine.batch.assign import plan_tasks
from pointsam_engine.batch.merge import merge
from pointsam_engine.config import SegmentConfig
from pointsam_engine.measure import Measurer

CRS = "EPSG:32633"
X0, Y0 = 500000.0, 4000040.0  # top left of raster a; 1 m pixels
# raster a spans x 0..40 m, raster b x 30..70 m (10 m of overlap), both y 0..40 m (local metres from X0, Y0 - 40)
RASTERS = {"a.tif": 0, "b.tif": 30}
# (raster, click, outline box, score, the task's holds_click): b's click lies where a's higher-scored object
# reaches over the overlap; c's outline missed its click in its own task
OBJECTS = {"a": ("a.tif", (25, 20), (15, 10, 38, 30), 0.9, True),
           "b": ("b.tif", (36.5, 20.5), (34, 12, 50, 28), 0.5, True),
           "c": ("b.tif", (60.5, 5.5), (55, 8, 65, 15), 0.7, False)}


def _xy(x, y):
    return X0 + x, Y0 - 40 + y


@pytest.fixture
def scene(tmp_path):
    rasters = {}
    for name, x in RASTERS.items():
        path = tmp_path / name
        with rasterio.open(path, "w", driver="GTiff", width=40, height=40, count=3, dtype="uint8", crs=CRS,
                           transform=from_origin(X0 + x, Y0, 1.0, 1.0)) as dst:
            dst.write(np.full((3, 40, 40), 120, dtype=np.uint8))
        rasters[name] = str(path)
    points = tmp_path / "points.gpkg"
    gpd.GeoDataFrame({"name": list(OBJECTS)}, geometry=[shapely.Point(*_xy(*o[1])) for o in OBJECTS.values()],
                     crs=CRS).to_file(points, layer="points")
    return rasters, points


def _task_layers(rows, measure):
    """A task's four layers as ``read_task_layers`` gives them: ``rows`` are (point_fid, object)."""
    outlines = [shapely.box(*_xy(*o[2][:2]), *_xy(*o[2][2:])) for _, o in rows]
    attrs = {"point_fid": np.array([f for f, _ in rows], dtype=np.int64),
             "score": np.array([o[3] for _, o in rows]), "area_m2": measure.areas(np.asarray(outlines, dtype=object)),
             "holds_click": np.array([o[4] for _, o in rows]), "source": np.array([o[0] for _, o in rows], dtype=object)}
    boxes = {**attrs, "angle_deg": np.zeros(len(rows)), "length_m": np.zeros(len(rows)), "width_m": np.zeros(len(rows))}
    skipped = gpd.GeoDataFrame({"point_fid": np.array([], dtype=np.int64), "label": np.array([], dtype=np.int32),
                                "reason": np.array([], dtype=object), "source": np.array([], dtype=object)},
                               geometry=gpd.GeoSeries([], crs=CRS).values, crs=CRS)
    return {"instances": gpd.GeoDataFrame(attrs, geometry=outlines, crs=CRS),
            "boxes": gpd.GeoDataFrame(boxes, geometry=outlines, crs=CRS),
            "bboxes": gpd.GeoDataFrame(attrs, geometry=outlines, crs=CRS), "skipped": skipped}


def test_the_lower_scored_object_keeps_its_click_pixel_across_a_raster_edge(scene):
    rasters, points = scene
    cfg = SegmentConfig()
    plan = plan_tasks(points, list(rasters.values()), cfg, band_px=1 << 30)
    owner = {f: t.raster for t in plan.tasks for f in t.fids}
    assert [owner[f] for f in (1, 2, 3)] == [rasters["a.tif"], rasters["b.tif"], rasters["b.tif"]]
    measure = Measurer(CRS)
    objects = list(OBJECTS.values())
    task_a, task_b = _task_layers([(1, objects[0])], measure), _task_layers([(2, objects[1]), (3, objects[2])], measure)
    before = gpd.GeoSeries([shapely.box(*_xy(*o[2][:2]), *_xy(*o[2][2:])) for o in objects], crs=CRS)
    layers, settled = merge([task_a, task_b], [rasters["a.tif"], rasters["b.tif"]], plan.skipped, [], plan, cfg, CRS)

    inst = layers["instances"].set_index("point_fid")
    a, b, c = (inst.geometry[f] for f in (1, 2, 3))
    click_b, pixel_b = shapely.Point(*_xy(36.5, 20.5)), shapely.box(*_xy(36, 20), *_xy(37, 21))  # b's grid: 1 m from x 30
    assert b.contains(click_b) and b.covers(pixel_b)  # the score took the overlap; the click pixel came back
    assert shapely.area(shapely.intersection(a, b)) < 1e-6  # and no overlap: a gave that pixel up
    assert not a.intersects(click_b)
    assert a.area == pytest.approx(before[0].area - 1.0) and b.area == pytest.approx(before[1].difference(before[0]).area + 1.0)
    assert c.equals(before[2]) and settled == 2  # c met no one
    assert inst["holds_click"].to_dict() == {1: True, 2: True, 3: False}  # c's task missed its click: still missed
    for name in ("boxes", "bboxes"):
        assert layers[name].set_index("point_fid")["holds_click"].to_dict() == {1: True, 2: True, 3: False}
        assert layers[name].set_index("point_fid").geometry[2].covers(b)
    assert inst["area_m2"][2] == pytest.approx(float(measure.areas(np.asarray([b], dtype=object))[0]))
    assert layers["boxes"].set_index("point_fid")["length_m"][2] > 0  # measured again


@pytest.mark.parametrize("min_area", [0.0, 2.0])
def test_an_object_wholly_under_a_neighbour_across_an_edge_keeps_only_its_click_pixel(scene, min_area):
    """As inside one raster: its click pixel comes back; under --min-area it is skipped with that reason."""
    rasters, points = scene
    cfg = SegmentConfig(min_area=min_area)
    plan = plan_tasks(points, list(rasters.values()), cfg, band_px=1 << 30)
    measure = Measurer(CRS)
    inside = ("b.tif", (36.5, 20.5), (34, 12, 37, 28), 0.5, True)  # wholly under a
    layers, _ = merge([_task_layers([(1, OBJECTS["a"])], measure), _task_layers([(2, inside)], measure)],
                      [rasters["a.tif"], rasters["b.tif"]], plan.skipped, [], plan, cfg, CRS)
    inst = layers["instances"].set_index("point_fid")
    if min_area:
        assert list(inst.index) == [1]
        assert layers["skipped"].set_index("point_fid")["reason"][2] == "smaller than --min-area"
    else:
        assert inst.geometry[2].equals(shapely.box(*_xy(36, 20), *_xy(37, 21)))
        assert shapely.area(shapely.intersection(inst.geometry[1], inst.geometry[2])) < 1e-6
