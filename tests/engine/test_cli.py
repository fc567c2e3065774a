import json
import os

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
import torch
from click.testing import CliRunner

from pointsam_engine.cli import main
from tests.conftest import write_points, write_raster
from tests.engine.test_output import foreign_state, sha256, user_geopackage


def run(*args):
    return CliRunner().invoke(main, ["segment", *map(str, args)])


def test_segment_with_a_model_writes_layers_and_report_and_reuses_the_disk_cache(tmp_path, blocks_scene, tiny_model):
    raster, points, _, centres = blocks_scene
    out, report = tmp_path / "out.gpkg", tmp_path / "run.json"
    args = [raster, points, "-o", out, "--model", tiny_model, "--report", report, "--cache-dir", tmp_path / "cache", "-q"]
    first = run(*args)
    assert first.exit_code == 0, first.output
    data = json.loads(report.read_text())
    assert data["points"] == data["objects"] == len(centres)
    assert data["instances"] + data["skipped"] == len(centres)
    assert 0 < data["encoder_passes"] < len(centres) and data["overlaps_after"] == 0
    assert {"encode", "decode", "vectorize", "write"} <= set(data["seconds"])
    assert data["stretch"]["method"] == "percentile"
    inst = gpd.read_file(out, layer="instances")
    assert len(inst) == data["instances"] and inst["model"].str.startswith("tiny-test@").all()
    second = run(*args[:-1], "--overwrite", "-q")
    assert second.exit_code == 0, second.output
    again = json.loads(report.read_text())
    assert again["encoder_passes"] == 0 and again["chips"] == data["chips"]
    assert again["instances"] == data["instances"]


def test_segment_into_a_users_geopackage_keeps_its_layers_and_overwrite_replaces_only_the_runs(
        tmp_path, blocks_scene, tiny_model):
    raster, points, _, _ = blocks_scene
    out = user_geopackage(tmp_path / "project.gpkg")
    before = foreign_state(out)
    args = [raster, points, "-o", out, "--model", tiny_model, "-q"]
    assert run(*args).exit_code == 0
    assert foreign_state(out) == before
    digest = sha256(out)
    refused = run(*args)
    assert refused.exit_code == 2 and "already has layer(s) instances, boxes, bboxes, skipped" in refused.stderr
    assert sha256(out) == digest
    again = run(*args, "--overwrite")
    assert again.exit_code == 0, again.output
    assert foreign_state(out) == before
    layers = {name for name, _ in pyogrio.list_layers(out)}
    assert layers == {"roads", "layer_styles", "instances", "boxes", "bboxes", "skipped"}


@pytest.fixture
def scene(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, (3, 100, 100), dtype=np.uint8)
    raster = write_raster(tmp_path / "r.tif", data)
    points = write_points(tmp_path / "p.gpkg", [(500025.0, 3999975.0)])
    return raster, points, tmp_path


def _bad_inputs(raster, points, tmp, tiny_model):
    text = tmp / "text.tif"
    text.write_text("hello")
    nocrs = write_raster(tmp / "nocrs.tif", np.zeros((1, 10, 10), np.uint8), crs=None)
    empty = tmp / "empty.gpkg"
    gpd.GeoDataFrame({"a": []}, geometry=[], crs="EPSG:32633").to_file(empty, geometry_type="Point")
    lines = tmp / "lines.gpkg"
    gpd.GeoDataFrame(geometry=[shapely.LineString([(0, 0), (1, 1)])], crs="EPSG:32633").to_file(lines)
    nocrs_pts = tmp / "nocrs_pts.geojson"
    nocrs_pts.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [500025.0, 3999975.0]}}]}))
    nocrs_pts_shp = tmp / "nocrs.shp"
    gpd.GeoDataFrame(geometry=[shapely.Point(500025.0, 3999975.0)]).to_file(nocrs_pts_shp)
    far = write_points(tmp / "far.gpkg", [(0.0, 0.0)])
    junk = tmp / "junk.pth"
    torch.save({"weight": torch.zeros(1)}, junk)
    locked = tmp / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    m = ["--model", tiny_model]
    return {
        "missing raster": ([tmp / "nope.tif", points, *m], "does not exist"),
        "unreadable raster": ([text, points, *m], "cannot read raster"),
        "raster without CRS": ([nocrs, points, *m], "--assume-crs"),
        "empty layer": ([raster, empty, *m], "no features"),
        "non-point geometries": ([raster, lines, *m], "give a point layer"),
        "points without CRS": ([raster, nocrs_pts_shp, *m], "no CRS"),
        "no point inside": ([raster, far, *m], "no point of .* lies inside"),
        "missing checkpoint": ([raster, points, "--model", tmp / "none.pth"], "does not exist"),
        "not a checkpoint": ([raster, points, "--model", junk], "not a SAM checkpoint"),
        "model type mismatch": ([raster, points, *m, "--model-type", "vit_l"], "drop --model-type"),
        "unknown band": ([raster, points, *m, "--bands", "4"], "band 4 does not exist"),
        "bad stretch": ([raster, points, *m, "--stretch", "98,2"], "--stretch"),
        "unwritable output": ([raster, points, *m], "not writable", locked / "out.gpkg"),
        "output folder missing": ([raster, points, *m], "folder .* does not exist", tmp / "no" / "out.gpkg"),
        "output not a GeoPackage": ([raster, points, *m, "--overwrite"], "not a GeoPackage; choose another name",
                                    raster.with_name("exists.gpkg")),
        "output has the run's layers": ([raster, points, *m], r"already has layer\(s\) instances, skipped; "
                                        "pass --overwrite", raster.with_name("earlier.gpkg")),
    }


CASES = ["missing raster", "unreadable raster", "raster without CRS", "empty layer", "non-point geometries",
         "points without CRS", "no point inside", "missing checkpoint", "not a checkpoint", "model type mismatch",
         "unknown band", "bad stretch", "unwritable output", "output folder missing", "output not a GeoPackage",
         "output has the run's layers"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_no_output(scene, tiny_model, case):
    if case == "unwritable output" and os.geteuid() == 0:
        pytest.skip("root can write to any folder, so permissions cannot make one unwritable")
    raster, points, tmp = scene
    spec = _bad_inputs(raster, points, tmp, tiny_model)[case]
    args, message = spec[0], spec[1]
    out = spec[2] if len(spec) > 2 else tmp / "out.gpkg"
    if case == "output not a GeoPackage":
        out.write_bytes(b"keep me")
    if case == "output has the run's layers":
        user_geopackage(out)
        for layer in ("instances", "skipped"):
            gpd.GeoDataFrame({"a": [1]}, geometry=[shapely.Point(0, 0)], crs="EPSG:32633").to_file(out, layer=layer)
    digest = sha256(out) if out.exists() else None
    before = sorted(p.name for p in tmp.iterdir())
    result = run(*args, "-o", out, "-q")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert __import__("re").search(message, lines[0]), lines[0]
    assert sorted(p.name for p in tmp.iterdir()) == before
    if digest:
        assert sha256(out) == digest
