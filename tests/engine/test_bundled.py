"""The bundled model (pointsam-tiny) and ``pointsam demo``, end to end on the CPU."""

import json
import re
import sqlite3

import numpy as np
import pyogrio
import pytest
import rasterio
from click.testing import CliRunner
from PIL import Image

from pointsam_engine.cli import main
from pointsam_engine.demo.run import run_scene
from pointsam_engine.sam.model import DEFAULT_MODEL, load_model
from training.model_card import training_stages

FRESH_SEEDS = {"buildings": (41001, 41002, 41003), "ships": (41002, 41003, 41004)}  # never used in training
# (seeds below 10000) or in the model card. A quick guard, so the mean over three small scenes: one scene of
# ~15 hulls, many rafted side by side, ranges 0.59-0.81 for the same model. The 0.75 bar on the model card's own
# scenes is checked in tests/training/test_model_card.py.
QUALITY_BAR = {"buildings": 0.75, "ships": 0.65}


def test_the_default_model_is_the_bundled_one_with_its_provenance():
    loaded = load_model(DEFAULT_MODEL, device="cpu")
    assert loaded.name == "pointsam-tiny" and loaded.arch.image_size == 256
    stages = training_stages(loaded.provenance)
    trained = [s for s in stages if "log" in s]  # an averaged stage trains nothing itself
    assert trained and all("averaged_with" in s for s in stages if "log" not in s)
    assert sum(s["config"]["steps"] for s in trained) >= 1000 and trained[-1]["log"][-1]["train_iou"] > 0.5


@pytest.mark.parametrize("kind", ["buildings", "ships"])
def test_bundled_model_reaches_its_quality_bar_on_fresh_scenes(kind, tmp_path):
    scores = []
    for seed in FRESH_SEEDS[kind]:
        figures = run_scene(kind, tmp_path / str(seed), seed=seed, size=384, model=DEFAULT_MODEL, preview=False)["figures"]
        assert figures["instances"] >= 5 and figures["missed_points"] == 0, figures
        scores.append(figures["miou"])
    assert np.mean(scores) >= QUALITY_BAR[kind], scores


def test_demo_writes_layers_evaluation_and_previews(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert str(tmp_path.resolve()) in result.output and "QGIS" in result.output
    assert all(re.search(rf"^{kind}: \d+\.\d s \(", result.output, re.M) for kind in ("buildings", "ships"))
    versions = {p.name: sqlite3.connect(p).execute("PRAGMA user_version").fetchone()[0] for p in tmp_path.glob("*.gpkg")}
    assert len(versions) == 6 and set(versions.values()) == {10200}, versions  # QGIS 3.22 reads 1.2 without a warning
    for kind in ("buildings", "ships"):
        clicks = pyogrio.read_dataframe(tmp_path / f"{kind}_points.gpkg")
        instances = pyogrio.read_dataframe(tmp_path / f"{kind}_pointsam.gpkg", layer="instances")
        boxes = pyogrio.read_dataframe(tmp_path / f"{kind}_pointsam.gpkg", layer="boxes")
        assert len(clicks) >= 5 and len(instances) == len(boxes) == len(clicks)  # one feature per click
        figures = json.loads((tmp_path / f"{kind}_evaluation.json").read_text())
        assert 0.0 <= figures["mf1"] <= 1.0 and figures["miou"] >= 0.6
        png = Image.open(tmp_path / f"{kind}_preview.png").convert("RGB")
        with rasterio.open(tmp_path / f"{kind}.tif") as src:
            assert max(png.size) == max(src.width, src.height)
        pixels = np.asarray(png).reshape(-1, 3).astype(int)
        outline = (pixels[:, 0] > 200) & (pixels[:, 1] > 160) & (pixels[:, 2] < 60)  # polygons drawn in yellow
        assert pixels.std() > 10 and outline.sum() > 100
