"""run_scene and pointsam demo: a scene generated, segmented, scored, its figures written and previewed."""

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from pointsam_engine.cli import main
from pointsam_engine.demo.run import run_scene
from pointsam_engine.output import TEMP_MARK
from tests.conftest import SquarePredictor


def test_evaluate_cli_reproduces_the_run_scene_figures(tmp_path):
    run = run_scene("buildings", tmp_path, seed=11, size=384, predictor=SquarePredictor(half=12), preview=False)
    out = tmp_path / "eval.json"
    files = run["files"]
    result = CliRunner().invoke(main, ["evaluate", files["output"], files["truth"], "--points", files["points"],
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["miou"] == pytest.approx(run["figures"]["miou"]) and 0 < figures["miou"] < 1
    assert figures["mf1"] > figures["miou"] and "mIoU" in result.output


def test_run_scene_writes_its_figures_and_a_preview_of_the_raster(tmp_path):
    run = run_scene("ships", tmp_path, seed=5, size=256, predictor=SquarePredictor(half=6), name="s")
    files = run["files"]
    assert json.loads(open(files["evaluation"]).read()) == pytest.approx(run["figures"])
    assert run["figures"]["kind"] == "ships" and run["figures"]["instances"] > 0
    with Image.open(files["preview"]) as png:
        assert png.size == (256, 256) and png.mode == "RGB"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["s.tif", "s_truth.gpkg", "s_points.gpkg", "s_pointsam.gpkg", "s_evaluation.json", "s_preview.png"])
    assert not any(TEMP_MARK in p.name for p in tmp_path.iterdir())


def test_demo_refuses_an_out_folder_that_is_a_file(tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    result = CliRunner().invoke(main, ["demo", "--out", str(blocker)])
    assert result.exit_code == 2 and "is a file, not a folder" in result.output and blocker.read_text() == "x"
