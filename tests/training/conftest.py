"""Fixtures for the training tests: one generated region, and a few-step run's config on the tiny model."""

import pytest

from pointsam_engine.demo.scenes import render, write_scene


@pytest.fixture(scope="session")
def scene(tmp_path_factory):
    """A 384 px ships scene written as a raster, its click layer and its reference polygons."""
    folder = tmp_path_factory.mktemp("region")
    return write_scene(render("ships", 384, seed=7301), folder, "ships")


@pytest.fixture(scope="session")
def train_config(scene, tiny_model):
    """``train_config(output, **changes)``: a 6-step run on ``scene`` with the tiny model, a checkpoint every 3 steps."""
    from training.config import TrainConfig
    from training.selftrain import SelfTrainOptions

    def make(output, **changes):
        options = dict(rasters=[str(scene["raster"])], points=[str(scene["points"])], output=str(output),
                       model=str(tiny_model), steps=6, val_fraction=0.0, checkpoint_every=3, bank_size=4,
                       match_interval=2, target_chips=2, selftrain=SelfTrainOptions(max_objects=4))
        options.update(changes)
        return TrainConfig(**options)

    return make
