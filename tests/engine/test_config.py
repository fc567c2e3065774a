"""SegmentConfig and TRAIN are the one home of every default: the CLI, the API schema, training and the QGIS
plugin's generated copy all read them."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pointsam_engine.api.schemas import SegmentJobRequest, TrainJobRequest
from pointsam_engine.cli import main
from pointsam_engine.cli import segment as segment_command
from pointsam_engine.config import (
    TRAIN,
    SegmentConfig,
    parse_bands,
    parse_stretch,
    plugin_defaults,
    plugin_defaults_source,
    stretch_text,
)
from pointsam_engine.errors import OptionError

ROOT = Path(__file__).resolve().parents[2]
FLAGS = {"no_calibration": ("calibration", True), "sar_db": ("sar_db", False), "keep_overlaps": ("keep_overlaps", False),
         "overwrite": ("overwrite", False)}  # flag -> the field it sets, and that field's default


def _config_value(name):
    value = getattr(SegmentConfig(), name)
    return stretch_text(value) if name == "stretch" else value


def test_every_segment_option_defaults_to_the_config_field_of_its_name():
    fields = {f.name for f in dataclasses.fields(SegmentConfig)}
    context = click.Context(segment_command)
    checked = 0
    for param in segment_command.params:
        if param.name in FLAGS:  # a flag is off by default; its field's default is what off means
            field, default = FLAGS[param.name]
            assert getattr(SegmentConfig(), field) == default and param.get_default(context) is False, param.name
        elif param.name in fields:
            assert param.get_default(context) == _config_value(param.name), param.name
            checked += 1
    assert checked >= 20


def test_segment_help_shows_the_config_defaults():
    text = " ".join(CliRunner().invoke(main, ["segment", "--help"], terminal_width=200).output.split())
    config = SegmentConfig()
    for flag, value in (("--stretch", stretch_text(config.stretch)), ("--calibration-iou", config.calibration_iou),
                        ("--chip-scale", config.chip_scale), ("--min-area", config.min_area),
                        ("--regularize", config.regularize), ("--device", config.device),
                        ("--precision", config.precision)):
        shown = re.search(re.escape(flag) + r"\b.*?\[default: ([^\]]+)\]", text)
        assert shown and shown.group(1) == str(value), flag


def test_the_api_schemas_default_to_the_config_and_train_defaults():
    config = SegmentConfig()
    for name, field in SegmentJobRequest.model_fields.items():
        if name in {f.name for f in dataclasses.fields(SegmentConfig)} and not field.is_required():
            assert field.default == _config_value(name), name
    for name, field in TrainJobRequest.model_fields.items():
        if hasattr(TRAIN, name):
            assert field.default == getattr(TRAIN, name), name
    assert TrainJobRequest.model_fields["stretch"].default == stretch_text(config.stretch)


def test_pointsam_train_defaults_to_the_train_defaults():
    training_cli = pytest.importorskip("training.cli")
    context = click.Context(training_cli.train)
    params = {p.name: p.get_default(context) for p in training_cli.train.params}
    for name in ("steps", "lr", "seed", "rank", "val_fraction", "val_every", "checkpoint_every", "background",
                 "prototype_weight", "anchor_weight", "accelerator", "devices", "strategy", "precision"):
        assert params[name] == getattr(TRAIN, name), name
    assert params["stretch"] == stretch_text(SegmentConfig.stretch) and params["chip_scale"] == SegmentConfig.chip_scale


def test_the_plugins_defaults_file_is_the_engines():
    """qgis_plugin/defaults.py is generated; regenerate it with python -m pointsam_engine.config when this fails."""
    assert (ROOT / "qgis_plugin" / "defaults.py").read_text() == plugin_defaults_source()


def test_the_plugins_defaults_file_reads_back_as_the_engines_values():
    namespace: dict = {}
    exec(plugin_defaults_source(), namespace)
    assert {k: namespace[k] for k in plugin_defaults()} == plugin_defaults()
    assert namespace["SEGMENT"]["calibration_iou"] == SegmentConfig.calibration_iou
    assert namespace["TRAIN"]["steps"] == TRAIN.steps and namespace["SEGMENT"]["stretch"] == "2,98"


def test_a_changed_default_changes_the_plugins_file(monkeypatch):
    before = plugin_defaults_source()
    monkeypatch.setattr("pointsam_engine.config.TRAIN", dataclasses.replace(TRAIN, steps=TRAIN.steps + 1))
    assert plugin_defaults_source() != before


@pytest.mark.parametrize("stretch, text", [((2.0, 98.0), "2,98"), ((0.5, 99.5), "0.5,99.5"), ("minmax", "minmax"),
                                           ("none", "none")])
def test_stretch_text_reads_back_as_the_same_stretch(stretch, text):
    assert stretch_text(stretch) == text and parse_stretch(text) == stretch


@pytest.mark.parametrize("text, says", [("98,2", "0 <= low < high <= 100"), ("2;98", "not understood"),
                                        ("0,101", "0 <= low < high <= 100")])
def test_a_bad_stretch_is_refused_with_the_fix(text, says):
    with pytest.raises(OptionError, match=re.escape(says)):
        parse_stretch(text)


@pytest.mark.parametrize("text, says", [("0,1,2", "the first band is 1"), ("1,2", "names 2 bands"), ("a", "not understood")])
def test_bad_bands_are_refused_with_the_fix(text, says):
    with pytest.raises(OptionError, match=says):
        parse_bands(text)


def test_replace_refuses_an_unknown_option_and_checks_the_new_values():
    config = SegmentConfig()
    with pytest.raises(OptionError, match="unknown option"):
        config.replace(calibration_io=0.2)
    with pytest.raises(OptionError, match="--calibration-iou"):
        config.replace(calibration_iou=2)
    assert config.replace(stretch="minmax").stretch == "minmax" and config.stretch == (2.0, 98.0)
