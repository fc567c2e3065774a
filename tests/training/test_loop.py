"""The training loop: a few steps write an adapter the engine applies; bad inputs stop it in one line; DDP."""

import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pytest
import shapely
from click.testing import CliRunner

from pointsam_engine.cli import main
from pointsam_engine.errors import ModelError, OutputError, PointsError
from pointsam_engine.sam.adapter import read_adapter
from training.loop import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_few_steps_write_an_adapter_that_the_engine_applies(scene, train_config, tmp_path):
    output = tmp_path / "region.adapter.pt"
    summary = train(train_config(output, val_fraction=0.3, val_every=3, val_polygons=[str(scene["truth"])]),
                    echo=lambda _: None)
    assert output.is_file() and (tmp_path / "region.csv").is_file() and (tmp_path / "region.png").stat().st_size > 1000
    history = read_adapter(output)["history"]
    assert [h["step"] for h in history] == [0, 3, 6] and all(0 <= h["miou"] <= 1 for h in history)
    best = max(history, key=lambda h: h["miou"])
    assert summary["best"]["step"] == best["step"] and read_adapter(output)["config"]["kept_step"] == best["step"]
    assert summary["steps"] == 6 and summary["checkpoint"] == str(tmp_path / "region.ckpt")
    header = (tmp_path / "region.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "focal", "dice", "iou_mse", "prototype", "miou", "single_click_share", "area_vs_base"} <= set(header)
    assert history[0]["area_vs_base"] == 1.0  # step 0 is the base model, matched object by object


def test_bad_inputs_fail_in_one_line_and_write_nothing(scene, tiny_model, train_config, tmp_path):
    far = tmp_path / "far.gpkg"
    gpd.GeoDataFrame(geometry=[shapely.Point(0, 0)], crs="EPSG:32633").to_file(far)
    out = tmp_path / "x.adapter.pt"
    with pytest.raises(PointsError, match="no point of .* lies inside"):
        train(train_config(out, points=[str(far)]), echo=lambda _: None)
    with pytest.raises(ModelError):
        train(train_config(out, model=str(tmp_path / "missing.pt")), echo=lambda _: None)
    with pytest.raises(OutputError, match="does not exist"):
        train(train_config(tmp_path / "no" / "x.adapter.pt"), echo=lambda _: None)
    assert not out.exists()
    result = CliRunner().invoke(main, ["train", "--raster", str(scene["raster"]), "--points", str(far), "-o", str(out),
                                       "--model", str(tiny_model)])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and result.output.startswith("error: ")


def test_two_processes_with_ddp_train_one_adapter(scene, tiny_model, tmp_path):
    """The multi-GPU path (``--strategy ddp``), run on the CPU with two processes and gloo."""
    output = tmp_path / "ddp.adapter.pt"
    command = [sys.executable, str(Path(sys.executable).with_name("pointsam")), "train", "--raster",
               str(scene["raster"]), "--points", str(scene["points"]), "--model", str(tiny_model), "-o", str(output),
               "--steps", "4", "--val-fraction", "0", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Starting with 2 processes" in done.stderr
    adapter = read_adapter(output)
    assert adapter["config"]["kept_step"] == 4 and adapter["config"]["strategy"] == "ddp"
    assert any(v.abs().sum() > 0 for k, v in adapter["state_dict"].items() if "_b." in k)  # the adapter learnt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.adapter.pt", "ddp.ckpt", "ddp.csv", "ddp.png"]
