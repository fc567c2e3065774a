"""Writing into a GeoPackage the user already has: every other layer, its styles and metadata survive."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyogrio
import pytest
import shapely

import pointsam_engine.output as output_module
from pointsam_engine import segment
from pointsam_engine.errors import Cancelled, OutputError
from pointsam_engine.output import LAYERS, check_target, write_geopackage
from tests.conftest import SquarePredictor

QGIS_STYLE = "<qgis version='3.22'><renderer-v2 type='singleSymbol'/></qgis>"


def user_geopackage(path) -> Path:
    """A GeoPackage as an analyst has it: a ``roads`` layer with rows, a QGIS style for it in ``layer_styles``,
    QGIS layer metadata and a dataset metadata item of its own."""
    roads = gpd.GeoDataFrame({"name": ["Kampala Rd", "Jinja Rd", "Entebbe Rd"], "lanes": [4, 2, 3],
                              "width_m": [12.5, 7.25, 9.0]},
                             geometry=[shapely.LineString([(500000 + i, 3999990), (500040 + i, 3999900 - i)])
                                       for i in range(3)], crs="EPSG:32633")
    pyogrio.write_dataframe(roads, path, layer="roads", dataset_metadata={"project": "kampala survey"})
    styles = pd.DataFrame({"f_table_catalog": [""], "f_table_schema": [""], "f_table_name": ["roads"],
                           "f_geometry_column": ["geom"], "styleName": ["roads by lanes"], "styleQML": [QGIS_STYLE],
                           "styleSLD": [""], "useAsDefault": [True], "description": ["the team's style"],
                           "owner": ["analyst"], "ui": [""], "update_time": ["2026-11-30T10:00:00"]})
    pyogrio.write_dataframe(styles, path, layer="layer_styles")
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO gpkg_metadata (md_scope, md_standard_uri, mime_type, metadata) "
                   "VALUES ('dataset', 'http://mrcc.com/qgis.dtd', 'text/xml', '<qgis><abstract>roads</abstract></qgis>')")
        db.execute("INSERT INTO gpkg_metadata_reference (reference_scope, table_name, md_file_id) "
                   "VALUES ('table', 'roads', last_insert_rowid())")
    db.close()
    return Path(path)


def foreign_state(path) -> dict:
    """Everything of the user's in the file, read through SQLite: rows (geometry blobs included) of ``roads``
    and ``layer_styles``, their registration, QGIS's metadata, and the spatial index of ``roads``."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        queries = {
            "roads": "SELECT * FROM roads ORDER BY fid",
            "layer_styles": "SELECT * FROM layer_styles ORDER BY rowid",
            "contents": "SELECT * FROM gpkg_contents WHERE table_name IN ('roads', 'layer_styles') ORDER BY table_name",
            "geometry_columns": "SELECT * FROM gpkg_geometry_columns WHERE table_name = 'roads'",
            "qgis_metadata": "SELECT m.metadata, r.table_name FROM gpkg_metadata m JOIN gpkg_metadata_reference r "
                             "ON r.md_file_id = m.id WHERE m.md_standard_uri = 'http://mrcc.com/qgis.dtd'",
            "roads_index": "SELECT * FROM rtree_roads_geom ORDER BY id",
        }
        return {name: db.execute(sql).fetchall() for name, sql in queries.items()}
    finally:
        db.close()


def roads_as_read(path) -> gpd.GeoDataFrame:
    return pyogrio.read_dataframe(path, layer="roads")


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_a_run_into_a_users_geopackage_keeps_its_layers_styles_and_metadata(tmp_path, blocks_scene, stub):
    raster, points, _, centres = blocks_scene
    out = user_geopackage(tmp_path / "project.gpkg")
    before, roads_before = foreign_state(out), roads_as_read(out)
    assert len(before["roads"]) == 3 and len(before["layer_styles"]) == 1 and before["qgis_metadata"]
    listing = sorted(p.name for p in tmp_path.iterdir())
    segment(raster, points, out, predictor=stub)
    assert sorted(p.name for p in tmp_path.iterdir()) == listing, "a temporary file or a sidecar was left"
    assert foreign_state(out) == before
    roads_after = roads_as_read(out)
    assert roads_after.drop(columns="geometry").equals(roads_before.drop(columns="geometry"))
    assert list(roads_after.geometry.to_wkb()) == list(roads_before.geometry.to_wkb())
    layers = {name for name, _ in pyogrio.list_layers(out)}
    assert layers == {"roads", "layer_styles", *LAYERS}
    assert len(pyogrio.read_dataframe(out, layer="instances")) == len(centres)
    meta = pyogrio.read_info(out, layer="instances")["dataset_metadata"]
    assert meta["project"] == "kampala survey" and '"percentile"' in meta["pointsam_stretch"]


def test_a_second_run_without_overwrite_is_refused_before_any_work_and_changes_nothing(tmp_path, blocks_scene, stub):
    raster, points, _, _ = blocks_scene
    out = user_geopackage(tmp_path / "project.gpkg")
    segment(raster, points, out, predictor=stub)
    digest = sha256(out)
    second = SquarePredictor()
    with pytest.raises(OutputError, match=r"already has layer\(s\) instances, boxes, bboxes, skipped; pass --overwrite"):
        segment(raster, points, out, predictor=second)
    assert second.chips == [], "the refused run read a chip"
    assert sha256(out) == digest


def test_overwrite_replaces_only_the_runs_layers(tmp_path, blocks_scene):
    raster, points, _, _ = blocks_scene
    out = user_geopackage(tmp_path / "project.gpkg")
    segment(raster, points, out, predictor=SquarePredictor(half=10))
    before = foreign_state(out)
    first = pyogrio.read_dataframe(out, layer="instances")
    segment(raster, points, out, predictor=SquarePredictor(half=5), overwrite=True)
    second = pyogrio.read_dataframe(out, layer="instances")
    assert len(second) == len(first)
    assert (second["area_m2"] < first["area_m2"] * 0.5).all(), "the run's layer was not replaced"
    assert foreign_state(out) == before
    assert {name for name, _ in pyogrio.list_layers(out)} == {"roads", "layer_styles", *LAYERS}


def test_a_failure_mid_write_leaves_the_file_byte_identical_and_no_temporary_file(tmp_path, blocks_scene, stub,
                                                                                  monkeypatch):
    raster, points, _, _ = blocks_scene
    out = user_geopackage(tmp_path / "project.gpkg")
    digest, listing = sha256(out), sorted(p.name for p in tmp_path.iterdir())
    real, calls = pyogrio.write_dataframe, []

    def failing(frame, path, layer=None, **kw):
        calls.append(layer)
        if len(calls) == 3:
            raise OSError("disk full (injected)")
        return real(frame, path, layer=layer, **kw)

    monkeypatch.setattr(output_module.pyogrio, "write_dataframe", failing)
    with pytest.raises(OSError, match="injected"):
        segment(raster, points, out, predictor=stub)
    assert calls == ["instances", "boxes", "bboxes"]
    assert sha256(out) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == listing


def test_a_cancelled_run_leaves_the_geopackage_as_it_was(tmp_path, blocks_scene, stub):
    raster, points, _, _ = blocks_scene
    out = user_geopackage(tmp_path / "project.gpkg")
    digest = sha256(out)
    event = threading.Event()

    def cancel_midway(fraction, stage):
        if fraction > 0.3:
            event.set()

    with pytest.raises(Cancelled):
        segment(raster, points, out, predictor=stub, progress=cancel_midway, cancel=event)
    assert sha256(out) == digest


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_file_that_is_not_a_geopackage_is_never_replaced(tmp_path, overwrite):
    text = tmp_path / "notes.gpkg"
    text.write_text("my notes, not a GeoPackage")
    with pytest.raises(OutputError, match="is not a GeoPackage; choose another name"):
        check_target(text, overwrite)
    assert text.read_text() == "my notes, not a GeoPackage"


def test_a_geopackage_holding_a_runs_layer_name_in_other_case_is_refused(tmp_path):
    out = tmp_path / "mixed.gpkg"
    frame = gpd.GeoDataFrame({"a": [1]}, geometry=[shapely.Point(0, 0)], crs="EPSG:32633")
    pyogrio.write_dataframe(frame, out, layer="Skipped")
    with pytest.raises(OutputError, match=r"has layer\(s\) skipped;"):
        check_target(out, overwrite=False)


def test_an_empty_file_counts_as_absent(tmp_path):
    out = tmp_path / "reserved.gpkg"
    out.touch()
    frame = gpd.GeoDataFrame({"a": [1]}, geometry=[shapely.Point(0, 0)], crs="EPSG:32633")
    write_geopackage({"skipped": frame}, out, overwrite=False)
    assert len(pyogrio.read_dataframe(out, layer="skipped")) == 1


def test_a_new_geopackage_is_written_as_version_1_2_which_qgis_3_22_reads_without_a_warning(tmp_path):
    out = tmp_path / "new.gpkg"
    frame = gpd.GeoDataFrame({"a": [1]}, geometry=[shapely.Point(0, 0)], crs="EPSG:32633")
    write_geopackage({"skipped": frame, "instances": frame.assign(geometry=[shapely.box(0, 0, 1, 1)])}, out, overwrite=False)
    with sqlite3.connect(out) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47  # "GPKG"
        assert db.execute("PRAGMA user_version").fetchone()[0] == 10200
    assert set(gpd.list_layers(out)["name"]) == {"skipped", "instances"}


HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA wal_autocheckpoint=0")  # the note stays in the write-ahead log, as QGIS's edits do
db.execute("CREATE TABLE notes (text TEXT)")
db.execute("INSERT INTO notes VALUES ('saved while open')")
print("ready", flush=True)
sys.stdin.readline()
print(db.execute("SELECT count(*) FROM instances").fetchone()[0], flush=True)
db.execute("INSERT INTO notes VALUES ('saved after the run')")
db.close()
"""


def test_a_geopackage_open_in_another_program_keeps_its_unsaved_log_and_stays_usable(tmp_path):
    """QGIS keeps a GeoPackage open in WAL mode; the run must neither lose what is in the log nor break
    the other program's connection (renaming a file over an open SQLite database would do both)."""
    out = user_geopackage(tmp_path / "project.gpkg")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert (tmp_path / "project.gpkg-wal").exists()
        squares = [shapely.box(500000 + i, 3999900, 500002 + i, 3999902) for i in (0, 5)]
        frame = gpd.GeoDataFrame({"a": [1, 2]}, geometry=squares, crs="EPSG:32633")
        write_geopackage({"instances": frame}, out, overwrite=False)
        seen, _ = holder.communicate("\n", timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert holder.returncode == 0 and seen.strip() == "2"
    db = sqlite3.connect(out)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert [r[0] for r in db.execute("SELECT text FROM notes")] == ["saved while open", "saved after the run"]
    finally:
        db.close()
    assert len(pyogrio.read_dataframe(out, layer="roads")) == 3



# -- the one atomic writer, and the checks made before any work -------------------------------------------------

class _Unwritable:
    def __str__(self):
        raise RuntimeError("cannot be written")


def _names(folder):
    return sorted(p.name for p in Path(folder).iterdir())


def test_a_json_report_whose_serializer_raises_leaves_no_temporary_file_and_no_target(tmp_path):
    with pytest.raises(RuntimeError, match="cannot be written"):
        output_module.write_json(tmp_path / "run.json", {"fine": 1, "bad": _Unwritable()})
    assert _names(tmp_path) == []


def test_a_failed_json_report_leaves_the_old_one_as_it_was(tmp_path):
    target = output_module.write_json(tmp_path / "run.json", {"run": 1, "when": Path("x")})
    assert json.loads(target.read_text()) == {"run": 1, "when": "x"}  # values JSON has no type for: as text
    with pytest.raises(RuntimeError):
        output_module.write_json(target, {"run": 2, "bad": _Unwritable()})
    assert json.loads(target.read_text()) == {"run": 1, "when": "x"} and _names(tmp_path) == ["run.json"]


def test_a_full_disk_while_writing_json_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(output_module.json, "dump", full)
    with pytest.raises(OutputError, match="no space left on the device writing .*run.json"):
        output_module.write_json(tmp_path / "run.json", {"run": 1})
    assert _names(tmp_path) == []


def test_atomic_path_renames_on_success_and_removes_its_temporary_file_on_ctrl_c(tmp_path):
    target = tmp_path / "model.pt"
    with output_module.atomic_path(target, ".pt") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(output_module.TEMP_MARK + ".pt")
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and _names(tmp_path) == ["model.pt"]
    with pytest.raises(KeyboardInterrupt):
        with output_module.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"whole" and _names(tmp_path) == ["model.pt"]


def test_scratch_path_removes_its_file_and_sqlites_side_files_even_on_success(tmp_path):
    with output_module.scratch_path(tmp_path / "out.gpkg", ".gpkg") as tmp:
        for name in (tmp.name, tmp.name + "-journal", tmp.name + "-wal"):
            (tmp_path / name).write_bytes(b"x")
    assert _names(tmp_path) == []


def test_check_file_target_refuses_an_existing_file_without_overwrite_and_a_folder(tmp_path):
    existing = tmp_path / "run.json"
    existing.write_text("{}")
    with pytest.raises(OutputError, match="--report .*run.json exists; pass --overwrite"):
        output_module.check_file_target(existing, False, "--report")
    assert output_module.check_file_target(existing, True, "--report") == existing
    with pytest.raises(OutputError, match="is a folder"):
        output_module.check_file_target(tmp_path, True, "--json")
    with pytest.raises(OutputError, match="folder .*missing does not exist"):
        output_module.check_file_target(tmp_path / "missing" / "run.json", True, "--json")


def test_check_distinct_refuses_an_output_that_is_an_input_or_another_output(tmp_path):
    out, raster = tmp_path / "out.gpkg", tmp_path / "r.tif"
    with pytest.raises(OutputError, match="--report .* is the same file as -o \\(another output\\)"):
        output_module.check_distinct({"-o": out, "--report": tmp_path / "." / "out.gpkg"})
    with pytest.raises(OutputError, match="is the same file as RASTER \\(an input\\)"):
        output_module.check_distinct({"-o": raster}, {"RASTER": raster})
    output_module.check_distinct({"-o": out, "--report": tmp_path / "run.json"}, {"RASTER": raster})


def test_check_folder_refuses_a_file_and_a_missing_folder_unless_it_may_create_it(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        output_module.check_folder(a_file, "--cache-dir", create=True)
    with pytest.raises(OutputError, match="does not exist"):
        output_module.check_folder(tmp_path / "new", "--adapters-dir")
    assert output_module.check_folder(tmp_path / "new" / "deeper", "--out", create=True) == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_check_target_refuses_a_wrong_suffix_and_an_existing_adapter_without_overwrite(tmp_path):
    with pytest.raises(OutputError, match="must end in .gpkg"):
        check_target(tmp_path / "out.shp", False)
    adapter = tmp_path / "a.adapter.pt"
    adapter.write_bytes(b"weights")
    with pytest.raises(OutputError, match="exists; pass --overwrite"):
        check_target(adapter, False, suffix=".pt", kind="an adapter file")
    assert check_target(adapter, True, suffix=".pt", kind="an adapter file") == adapter
