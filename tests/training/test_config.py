"""A run's settings: the files it writes beside the adapter, and the checks that refuse it before anything runs."""

import shutil
from pathlib import Path

import pytest

from pointsam_engine.errors import OptionError, OutputError, PointsError, RasterError
from training.config import RunFiles, TrainConfig, check_inputs
from training.selftrain import SelfTrainOptions


@pytest.mark.parametrize("name, stem", [("north.adapter.pt", "north"), ("north.pt", "north")])
def test_the_checkpoint_log_and_plot_lie_beside_the_adapter(tmp_path, name, stem):
    files = TrainConfig(rasters=[], points=[], output=str(tmp_path / name)).files()
    assert files == RunFiles(adapter=tmp_path / name, checkpoint=tmp_path / f"{stem}.ckpt", csv=tmp_path / f"{stem}.csv",
                             plot=tmp_path / f"{stem}.png")


def _refused(cfg, error, match):
    folder = Path(cfg.output).parent
    before = sorted(folder.iterdir())
    with pytest.raises(error, match=match) as caught:
        check_inputs(cfg)
    assert "\n" not in str(caught.value) and sorted(folder.iterdir()) == before  # one line, nothing written


def test_inputs_come_in_pairs(scene, train_config, tmp_path):
    output = tmp_path / "x.adapter.pt"
    _refused(train_config(output, points=[]), OptionError, "--raster and --points in pairs")
    _refused(train_config(output, val_polygons=[str(scene["truth"])] * 2), OptionError, "one --val-polygons per --raster")
    _refused(train_config(output, selftrain=SelfTrainOptions(supervised=True)), OptionError,
             "reference polygons for every raster")


def test_numbers_out_of_range_are_refused(train_config, tmp_path):
    output = tmp_path / "x.adapter.pt"
    _refused(train_config(output, steps=0), OptionError, "--steps")
    _refused(train_config(output, val_fraction=1.0), OptionError, "--val-fraction")


def test_missing_or_unreadable_inputs_are_refused(scene, train_config, tmp_path):
    output = tmp_path / "x.adapter.pt"
    _refused(train_config(output, rasters=[str(tmp_path / "none.tif")]), RasterError, "none.tif does not exist")
    table = tmp_path / "clicks.csv"
    table.write_text("x,y\n1,2\n")
    _refused(train_config(output, points=[str(table)]), PointsError, "clicks.csv")


def test_an_output_that_is_an_input_is_refused(scene, train_config, tmp_path):
    raster = tmp_path / "region.png"  # the plot of region.adapter.pt
    shutil.copy(scene["raster"], raster)
    with pytest.raises(OutputError, match="its plot .*region.png is the same file as --raster"):
        check_inputs(train_config(tmp_path / "region.adapter.pt", rasters=[str(raster)]))


def test_an_existing_adapter_needs_overwrite_and_resume_needs_a_checkpoint(train_config, tmp_path):
    output = tmp_path / "x.adapter.pt"
    output.write_bytes(b"an earlier adapter")
    _refused(train_config(output), OutputError, "exists")
    check_inputs(train_config(output, overwrite=True))
    _refused(train_config(output, resume=True), OptionError, r"no checkpoint .*x\.ckpt; run without --resume")
