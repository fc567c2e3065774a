"""Every object to one raster: where rasters overlap, the one holding its click farthest from an edge; clicks on
no raster skipped with the reason; a tall raster cut into bands that own their objects."""

import geopandas as gpd
import numpy as np
import pytest
import shapely

from pointsam_engine.batch.assign import ON_NO_RASTER, plan_tasks
from pointsam_engine.config import SegmentConfig
from tests.engine.batch.scenes import survey


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    return survey(tmp_path_factory.mktemp("assign"), size=512, seed=3)


def _owner_by_rule(xy, tiles):
    """The tile holding ``xy`` farthest from its edge, computed here from the tiles' bounds."""
    import rasterio

    best, owner = -1.0, None
    for path in tiles:
        with rasterio.open(path) as src:
            left, bottom, right, top = src.bounds
        d = min(xy[0] - left, right - xy[0], xy[1] - bottom, top - xy[1])
        if d > best:
            best, owner = d, str(path)
    return owner if best > 0 else None


def test_each_object_goes_once_to_the_raster_holding_it_farthest_from_an_edge(tiles):
    plan = plan_tasks(tiles["points"], [str(p) for p in tiles["tiles"]], SegmentConfig(), band_px=16384)
    points = gpd.read_file(tiles["points"], fid_as_index=True)
    owners = {fid: task.raster for task in plan.tasks for fid in task.fids}
    assigned = [fid for task in plan.tasks for fid in task.fids]
    assert len(assigned) == len(set(assigned)) == len(points)  # every click once
    for fid, geom in points.geometry.items():
        assert owners[fid] == _owner_by_rule((geom.x, geom.y), tiles["tiles"])


def test_clicks_on_no_raster_are_skipped_with_the_reason(tiles, tmp_path):
    points = gpd.read_file(tiles["points"])
    outside = gpd.GeoDataFrame({"object_id": [0]}, geometry=[shapely.Point(0, 0)], crs=points.crs)
    path = tmp_path / "points.gpkg"
    gpd.GeoDataFrame(np.concatenate([points.values, outside.values]), columns=points.columns,
                     geometry="geometry", crs=points.crs).to_file(path)
    plan = plan_tasks(path, [str(p) for p in tiles["tiles"]], SegmentConfig(), band_px=16384)
    assert list(plan.skipped["reason"]) == [ON_NO_RASTER]
    assert sum(len(t.fids) for t in plan.tasks) == len(points)


def test_a_tall_raster_becomes_bands_owning_their_objects(tiles):
    plan = plan_tasks(tiles["points"], [str(tiles["scene"])], SegmentConfig(), band_px=200)
    assert sorted({t.band for t in plan.tasks}) == [0, 1, 2]
    points = gpd.read_file(tiles["points"], fid_as_index=True)
    import rasterio

    with rasterio.open(tiles["scene"]) as src:
        for task in plan.tasks:
            rows = [src.index(points.geometry[f].x, points.geometry[f].y)[0] for f in task.fids]
            assert all(r // 200 == task.band for r in rows)


def test_a_task_is_redone_on_resume_when_an_option_of_its_layers_changes_not_one_of_speed(tiles):
    def keys(cfg):
        return [task.key for task in plan_tasks(tiles["points"], [str(p) for p in tiles["tiles"]], cfg,
                                                band_px=16384).tasks]

    base = SegmentConfig()
    assert keys(base.replace(decoder_batch=3, cache_mb=16)) == keys(base)
    assert all(a != b for a, b in zip(keys(base.replace(calibration_iou=0.3)), keys(base)))
