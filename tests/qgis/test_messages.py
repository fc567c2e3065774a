"""What the dock and the algorithms say: the engine's option names become the fields' names, the Bands field is
read with one line naming it, stages are said in words, skipped clicks are counted per reason, each outline mode
has its label."""

from __future__ import annotations

import pytest

from qgis_plugin.defaults import CHOICES
from qgis_plugin.errors import PluginError
from qgis_plugin.messages import OUTLINES, in_plugin_terms, parse_bands, skipped_summary, stage_text


@pytest.mark.parametrize("engine, plugin", [
    ("--bands '3,2' names 2 bands; give one band (repeated to grey) or three",
     "Bands '3,2' names 2 bands; give one band (repeated to grey) or three"),
    ("output /d/out.gpkg already holds the layers instances, boxes; pass --overwrite to replace them",
     "output /d/out.gpkg already holds the layers instances, boxes; confirm replacing them when PointSAM asks"),
    ("no model vit_l in /m; put the official checkpoint there or pass --model PATH",
     "no model vit_l in /m; put the official checkpoint there or set Model"),
    ("raster s.tif has no CRS; pass --assume-crs (e.g. EPSG:32633) to say which it is",
     "raster s.tif has no CRS; assign one to the file (Processing: Assign projection, e.g. EPSG:32633)"),
    ("--min-area -1 is negative; use --min-area 0 or more", "Minimum area (m²) -1 is negative; set Minimum area (m²) 0 or more"),
])
def test_engine_messages_name_the_fields_not_the_command_line_options(engine, plugin):
    assert in_plugin_terms(engine) == plugin


def test_the_plugins_copies_of_layers_are_named_as_the_layers():
    copies = {"/tmp/pointsam-dock-x1/points.gpkg": "Banepa `-o` --points clicks"}
    message = "no point of /tmp/pointsam-dock-x1/points.gpkg lies inside r.tif; check the layers' CRS or pass --bands"
    assert in_plugin_terms(message, copies) == "no point of 'Banepa `-o` --points clicks' lies inside r.tif; check " \
        "the layers' CRS or set Bands", "the layer's name is kept as it is"


def test_commands_in_backquotes_and_options_without_a_field_are_kept():
    message = "start `pointsam serve --model vit_b --connection-file /x` there; --device cuda was asked for"
    assert in_plugin_terms(message) == message


@pytest.mark.parametrize("text, bands", [("3,2,1", [3, 2, 1]), (" 1 ", [1]), ("4, 3, 2", [4, 3, 2]), ("", [])])
def test_bands_are_read_as_band_numbers(text, bands):
    assert parse_bands(text) == bands


@pytest.mark.parametrize("text", ["a,b", "3;2;1", "0,1,2", "3,,1"])
def test_bad_bands_get_one_line_naming_the_field(text):
    with pytest.raises(PluginError) as error:
        parse_bands(text)
    message = str(error.value)
    assert message.startswith("Bands: give band numbers separated by commas, e.g. 3,2,1")
    assert "invalid literal" not in message and "\n" not in message


def test_stages_are_said_in_words():
    assert stage_text("chip 3/10") == "segmenting: chip 3 of 10 done"
    assert stage_text("writing") == "writing the GeoPackage"
    assert stage_text("encoding chip 2/5") == "encoding chip 2/5"
    assert stage_text("downloading 12/375 MB") == "downloading 12/375 MB", "stages it does not know pass through"


def test_skipped_clicks_are_counted_per_reason_most_frequent_first():
    reasons = ["on nodata", "outside raster", "outside raster", "empty mask", "outside raster"]
    assert skipped_summary(reasons) == "5 clicks skipped: 3 outside raster, 1 on nodata, 1 empty mask"
    assert skipped_summary(["empty mask"]) == "1 click skipped: 1 empty mask"
    assert skipped_summary([]) == ""


def test_every_outline_the_engine_draws_has_one_label():
    assert list(OUTLINES) == list(CHOICES["regularize"])  # the dock lists them in the engine's order
    assert len(set(OUTLINES.values())) == len(OUTLINES)
