"""``batch_segment()`` on a LocalCluster of 2 worker processes over tiles that overlap and abut: one instance per
click, none twice, no overlaps across raster edges, the objects ``segment()`` gives each raster; a worker killed
mid-run; ``resume`` after a cancel; a corrupt raster in ``failed``."""

import os
import signal
import threading

import geopandas as gpd
import numpy as np
import psutil
import pytest
import shapely

from pointsam_engine.batch import batch_segment, check_batch_inputs, cluster, work_folder
from pointsam_engine.batch.assign import plan_tasks
from pointsam_engine.config import BATCH, SegmentConfig
from pointsam_engine.errors import Cancelled, OptionError
from pointsam_engine.pipeline import segment
from tests.engine.batch.scenes import survey


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    data = survey(tmp_path_factory.mktemp("survey"), size=512, seed=3)
    (data["tiles"][0].parent / "zz_broken.tif").write_bytes(b"II*\x00" + b"\x13" * 400)  # a TIFF header, then junk
    return data


@pytest.fixture(scope="module")
def run(tiles, tmp_path_factory):
    output = tmp_path_factory.mktemp("out") / "survey.gpkg"
    result = batch_segment(tiles["points"], output, [str(tiles["tiles"][0].parent)], workers=2)
    return result


def test_one_instance_per_click_none_twice_and_every_click_accounted(run, tiles):
    points = gpd.read_file(tiles["points"], fid_as_index=True)
    inst, skipped = run.layers["instances"], run.layers["skipped"]
    assert inst["point_fid"].is_unique
    assert set(inst["point_fid"]) | set(skipped["point_fid"]) == set(points.index)
    assert not set(inst["point_fid"]) & set(skipped["point_fid"])
    assert len(inst) == len(gpd.read_file(run.output, layer="instances"))
    assert set(inst["source"]) <= {p.name for p in tiles["tiles"]} and inst["source"].nunique() == 4


def test_no_overlaps_across_raster_edges_and_every_object_holds_its_click(run, tiles):
    inst = run.layers["instances"]
    geoms = inst.geometry.values
    left, right = shapely.STRtree(geoms).query(geoms, predicate="overlaps")
    shared = shapely.area(shapely.intersection(geoms[left[left < right]], geoms[right[left < right]]))
    assert not (shared > 1e-6).any()
    clicks = gpd.read_file(tiles["points"], fid_as_index=True).geometry.to_crs(inst.crs)
    held = inst[inst["holds_click"]]
    assert len(held) and shapely.contains(held.geometry.values, clicks[held["point_fid"]].values).all()
    assert run.report["clicks_not_held"] == int((~inst["holds_click"]).sum())


def _as_segment_gives(merged: gpd.GeoDataFrame, tasks, points: gpd.GeoDataFrame, tmp_path) -> None:
    """Each merged object as ``segment()`` outlines it on its task's raster with that task's clicks; where two
    tasks' objects overlap, the lower score gave way (and only there an object lost area)."""
    alone = []
    for task in tasks:
        path = tmp_path / f"{task.id}.gpkg"
        points.loc[list(task.fids)].reset_index(names="fid").to_file(path, layer="points")
        alone.append(segment(task.raster, path).layers["instances"].assign(task=task.id))
    alone = gpd.GeoDataFrame(np.concatenate([a.values for a in alone]), columns=alone[0].columns,
                             geometry="geometry", crs=alone[0].crs).set_index("point_fid")
    merged = merged.set_index("point_fid")
    assert set(merged.index) <= set(alone.index)
    tree = shapely.STRtree(alone.geometry.values)
    for fid, row in merged.iterrows():
        single = alone.geometry[fid]
        assert shapely.area(shapely.difference(row.geometry, single)) <= 0.02 * single.area  # never grows
        lost = shapely.area(shapely.difference(single, row.geometry))
        if lost > 0.02 * single.area:  # only to a higher-scored object of another task
            near = [alone.index[j] for j in tree.query(single, predicate="overlaps")]
            rivals = [j for j in near if alone.loc[j, "task"] != alone.loc[fid, "task"]]
            assert rivals and max(alone.loc[j, "score"] for j in rivals) >= alone.loc[fid, "score"]


def test_objects_are_those_segment_gives_each_raster(run, tiles, tmp_path):
    plan = plan_tasks(tiles["points"], [str(p) for p in tiles["tiles"]], SegmentConfig(), 1 << 30)
    _as_segment_gives(run.layers["instances"], plan.tasks, plan.points, tmp_path)


def test_a_raster_cut_into_bands_segments_each_click_once_as_segment_does(tiles, tmp_path):
    """A raster taller than ``band_px`` runs as 3 band tasks: every click once, none lost at a band edge, each
    band's objects those ``segment()`` gives with its clicks, and per click the object a whole-raster run gives
    (a band plans its chips over its own clicks, so SAM may see an object in another window: its outline can
    move a little, never to another object)."""
    points = gpd.read_file(tiles["points"], fid_as_index=True)
    plan = plan_tasks(tiles["points"], [str(tiles["scene"])], SegmentConfig(), band_px=200)
    assert sorted(t.band for t in plan.tasks) == [0, 1, 2]
    result = batch_segment(tiles["points"], tmp_path / "out.gpkg", [str(tiles["scene"])], workers=1, band_px=200)
    inst = result.layers["instances"]
    assert result.report["tasks"] == 3 and result.report["objects"] == len(points)
    assert inst["point_fid"].is_unique and len(result.layers["skipped"]) == 0
    assert set(inst["point_fid"]) == set(points.index)
    _as_segment_gives(inst, plan.tasks, plan.points, tmp_path)
    whole = segment(str(tiles["scene"]), tiles["points"]).layers["instances"].set_index("point_fid")
    assert set(whole.index) == set(inst["point_fid"])
    banded = inst.set_index("point_fid").geometry
    iou = shapely.area(shapely.intersection(banded[whole.index].values, whole.geometry.values)) / \
        shapely.area(shapely.union(banded[whole.index].values, whole.geometry.values))
    assert (iou > 0.5).all(), dict(zip(whole.index, iou.round(3)))  # the same object for every click


def test_a_corrupt_raster_lands_in_failed_and_the_others_finish(run):
    failed = run.layers["failed"]
    assert list(failed["source"]) == ["zz_broken.tif"]
    assert "zz_broken.tif" in failed["reason"].iloc[0] and "\n" not in failed["reason"].iloc[0]
    assert len(gpd.read_file(run.output, layer="failed")) == 1
    assert run.report["ran"] == run.report["tasks"] == 4


def test_the_model_is_loaded_once_per_worker(run):
    assert 1 <= run.report["model_loads"] <= 2


def test_a_worker_killed_mid_run_and_the_batch_completes(tiles, tmp_path):
    killed = []

    def kill_a_worker(fraction, stage):
        if stage.startswith("task") and not killed:
            workers = [p for p in psutil.Process().children(recursive=True)
                       if "spawn_main" in " ".join(p.cmdline())]
            if workers:
                os.kill(workers[0].pid, signal.SIGKILL)
                killed.append(workers[0].pid)

    output = tmp_path / "out.gpkg"
    result = batch_segment(tiles["points"], output, [str(p) for p in tiles["tiles"]], workers=2, progress=kill_a_worker)
    assert killed
    assert result.report["failed"] == 0 and result.report["ran"] == result.report["tasks"]
    assert len(result.layers["instances"]) + len(result.layers["skipped"]) == len(gpd.read_file(tiles["points"]))


def test_resume_after_a_cancel_runs_only_the_remaining_rasters(tiles, tmp_path, monkeypatch):
    # one task at a time: with two threads the four small tiles could all finish before the cancel landed
    monkeypatch.setattr(cluster, "cluster_shape", lambda workers, cores=None: (1, 1))
    output = tmp_path / "out.gpkg"
    stop = threading.Event()
    rasters = [str(p) for p in tiles["tiles"]]
    with pytest.raises(Cancelled):
        batch_segment(tiles["points"], output, rasters, workers=1,
                      progress=lambda f, stage: stop.set() if stage.startswith("task") else None, cancel=stop)
    assert not output.exists()
    kept = len(list(work_folder(output).glob("*.json")))
    assert 1 <= kept < 4
    result = batch_segment(tiles["points"], output, rasters, workers=1, resume=True)
    assert result.report["reused"] == kept and result.report["ran"] == 4 - kept
    assert len(result.layers["instances"]) + len(result.layers["skipped"]) == len(gpd.read_file(tiles["points"]))
    assert not work_folder(output).exists()  # nothing failed: the work folder goes


def test_a_work_folder_holding_only_the_workers_log_needs_no_resume(tiles, tmp_path):
    """A batch cancelled before any task finished leaves at most its workers' log: nothing to resume."""
    output = tmp_path / "survey.gpkg"
    work = work_folder(output)
    work.mkdir()
    (work / BATCH.worker_log).write_text("a lost heartbeat\n")
    rasters = [str(tiles["tiles"][0].parent)]
    assert check_batch_inputs(tiles["points"], output, rasters, SegmentConfig())
    (work / "00000-tile0.json").write_text("{}")
    with pytest.raises(OptionError, match="--resume"):
        check_batch_inputs(tiles["points"], output, rasters, SegmentConfig())
