"""Every bad input, every command and route: one ``error:`` line (or a 4xx ``{"error", "message"}``), exit code 2,
no traceback, nothing written and nothing the user had changed (every file hashed before and after).

The cases are a table; the last test prints how many ran and how many kept that promise (the README quotes it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
import torch
from click.testing import CliRunner
from fastapi.testclient import TestClient

from pointsam_engine.cli import main
from tests.conftest import write_points, write_raster
from tests.engine.test_output import user_geopackage

TOKEN = "bad-inputs-token"
KEPT: Dict[str, bool] = {}


@dataclass
class Case:
    id: str
    command: str  # a CLI command, or "api"
    args: Sequence = ()  # CLI arguments; "{name}" is replaced by the world's path of that name, "{out}" the case folder
    expect: str = ""  # a regular expression the one error line must match
    setup: Optional[Callable[[Path, dict], None]] = None  # files the user already has in the case folder
    method: str = "POST"
    route: str = ""
    body: object = None  # API JSON (formatted like args) or raw bytes
    status: int = 422
    headers: Dict[str, str] = field(default_factory=dict)


# -- the user's files --------------------------------------------------------------------------------------------

def _world(base: Path, tiny_model: Path) -> dict:
    inputs = base / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    w = {"model": str(tiny_model)}
    w["raster"] = write_raster(inputs / "r.tif", rng.integers(0, 255, (3, 100, 100), dtype=np.uint8))
    w["points"] = write_points(inputs / "p.gpkg", [(500025.0, 3999975.0)], cls=["house"])
    w["text"] = inputs / "text.tif"
    w["text"].write_text("hello")
    w["nocrs"] = write_raster(inputs / "nocrs.tif", np.zeros((1, 10, 10), np.uint8), crs=None)
    empty = inputs / "empty.gpkg"
    gpd.GeoDataFrame({"a": []}, geometry=[], crs="EPSG:32633").to_file(empty, geometry_type="Point")
    w["empty"] = empty
    w["lines"] = inputs / "lines.gpkg"
    gpd.GeoDataFrame(geometry=[shapely.LineString([(0, 0), (1, 1)])], crs="EPSG:32633").to_file(w["lines"])
    w["nocrs_points"] = inputs / "nocrs.shp"
    gpd.GeoDataFrame(geometry=[shapely.Point(500025.0, 3999975.0)]).to_file(w["nocrs_points"])
    w["far"] = write_points(inputs / "far.gpkg", [(0.0, 0.0)])
    w["csv"] = inputs / "points.csv"
    w["csv"].write_text("x,y,id\n500025,3999975,1\n")
    w["two_layers"] = write_points(inputs / "two.gpkg", [(500025.0, 3999975.0)], layer="a")
    write_points(w["two_layers"], [(500025.0, 3999975.0)], layer="b")
    w["labels"] = write_points(inputs / "labels.gpkg", [(500025.0, 3999975.0)], flag=["yes"])
    w["negatives"] = write_points(inputs / "negatives.gpkg", [(500025.0, 3999975.0)], lab=[0])
    w["junk_model"] = inputs / "junk.pth"
    torch.save({"weight": torch.zeros(1)}, w["junk_model"])
    payload = torch.load(tiny_model, weights_only=True)
    w["no_arch"] = inputs / "no_arch.pt"
    torch.save({k: v for k, v in payload.items() if k != "arch"}, w["no_arch"])
    w["no_base"] = inputs / "no_base.adapter.pt"
    torch.save({"format": "pointsam-adapter", "version": 1, "lora": {"rank": 4}, "state_dict": {}}, w["no_base"])
    w["other_base"] = inputs / "other.adapter.pt"
    torch.save({"format": "pointsam-adapter", "version": 1, "lora": {"rank": 4}, "state_dict": {},
                "base": {"name": "vit_b", "sha256": "0" * 64, "model_type": "vit_b"}}, w["other_base"])
    w["vrt"] = inputs / "missing_source.vrt"
    w["vrt"].write_text(
        '<VRTDataset rasterXSize="100" rasterYSize="100"><SRS>EPSG:32633</SRS>'
        "<GeoTransform>500000, 0.5, 0, 4000000, 0, -0.5</GeoTransform>"
        '<VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{inputs / "gone.tif"}</SourceFilename><SourceBand>1</SourceBand>'
        "</SimpleSource></VRTRasterBand></VRTDataset>")
    big = write_raster(inputs / "big.tif", rng.integers(0, 255, (3, 1024, 1024), dtype=np.uint8), tiled=True,
                       blockxsize=256, blockysize=256)
    w["truncated"] = inputs / "truncated.tif"
    w["truncated"].write_bytes(big.read_bytes()[: big.stat().st_size * 2 // 3])
    big.unlink()
    square = shapely.box(500020.0, 3999970.0, 500030.0, 3999980.0)
    grid = {"transform": [0.5, 0.0, 500000.0, 0.0, -0.5, 4000000.0], "shape": [100, 100], "crs": "EPSG:32633"}
    w["pred"] = inputs / "pred.gpkg"
    pyogrio.write_dataframe(gpd.GeoDataFrame({"point_fid": [1]}, geometry=[square], crs="EPSG:32633"), w["pred"],
                            layer="instances", dataset_metadata={"pointsam_grid": json.dumps(grid)})
    w["pred_no_fid"] = inputs / "pred_no_fid.gpkg"
    pyogrio.write_dataframe(gpd.GeoDataFrame({"score": [1.0]}, geometry=[square], crs="EPSG:32633"),
                            w["pred_no_fid"], layer="instances", dataset_metadata={"pointsam_grid": json.dumps(grid)})
    w["pred_no_grid"] = inputs / "pred_no_grid.gpkg"
    pyogrio.write_dataframe(gpd.GeoDataFrame({"point_fid": [1]}, geometry=[square], crs="EPSG:32633"),
                            w["pred_no_grid"], layer="instances")
    w["truth"] = inputs / "truth.gpkg"
    gpd.GeoDataFrame({"id": [1]}, geometry=[square], crs="EPSG:32633").to_file(w["truth"])
    w["truth_far"] = inputs / "truth_far.gpkg"
    gpd.GeoDataFrame({"id": [1]}, geometry=[shapely.box(0, 0, 10, 10)], crs="EPSG:32633").to_file(w["truth_far"])
    w["truth_empty"] = inputs / "truth_empty.gpkg"
    gpd.GeoDataFrame({"id": []}, geometry=[], crs="EPSG:32633").to_file(w["truth_empty"], geometry_type="Polygon")
    w["truth_nocrs"] = inputs / "truth_nocrs.shp"
    gpd.GeoDataFrame({"id": [1]}, geometry=[square]).to_file(w["truth_nocrs"])
    w["adapter_file"] = inputs / "region.adapter.pt"
    w["adapter_file"].write_bytes(b"not an adapter")
    w["a_file"] = inputs / "a_file"
    w["a_file"].write_text("a file, not a folder")
    w["long"] = "x" * 300 + ".gpkg"
    return {k: str(v) for k, v in w.items()}


def _existing_report(case: Path, _w) -> None:
    (case / "run.json").write_text('{"mine": true}')


def _users_geopackage(case: Path, _w) -> None:
    user_geopackage(case / "project.gpkg")


def _runs_layers(case: Path, _w) -> None:
    out = user_geopackage(case / "earlier.gpkg")
    gpd.GeoDataFrame({"a": [1]}, geometry=[shapely.Point(0, 0)], crs="EPSG:32633").to_file(out, layer="instances")


def _not_a_geopackage(case: Path, _w) -> None:
    (case / "notes.gpkg").write_bytes(b"keep me")


def _existing_file(name: str):
    def setup(case: Path, _w) -> None:
        (case / name).write_bytes(b"the user's file")
    return setup


def _subfolder(name: str):
    def setup(case: Path, _w) -> None:
        (case / name).mkdir()
    return setup


# -- the table ---------------------------------------------------------------------------------------------------

SEG = ["{raster}", "{points}", "--model", "{model}", "-q"]
OUT = ["-o", "{out}/out.gpkg"]


SHORTER = "too long .*choose a shorter name"  # a name over the file system's limit gets the fix


def _segment_cases():
    s = lambda id, args, expect, setup=None: Case(f"segment: {id}", "segment", args, expect, setup)  # noqa: E731
    cases = [
        s("missing raster", ["{out}/none.tif", "{points}", "--model", "{model}", *OUT], "raster .*none.tif does not exist"),
        s("raster is a folder", ["{out}", "{points}", "--model", "{model}", *OUT], "cannot read raster"),
        s("text file as raster", ["{text}", "{points}", "--model", "{model}", *OUT], "cannot read raster"),
        s("raster without CRS", ["{nocrs}", "{points}", "--model", "{model}", *OUT], "no CRS; pass --assume-crs"),
        s("VRT with a missing source", ["{vrt}", "{points}", "--model", "{model}", *OUT], "gone.tif, which does not exist"),
        s("truncated GeoTIFF", ["{truncated}", "{points}", "--model", "{model}", *OUT], "raster .*truncated.tif"),
        s("missing points", ["{raster}", "{out}/none.gpkg", "--model", "{model}", *OUT], "point layer .* does not exist"),
        s("points is a folder", ["{raster}", "{out}", "--model", "{model}", *OUT], "point layer .* is a folder"),
        s("empty point layer", ["{raster}", "{empty}", "--model", "{model}", *OUT], "no features"),
        s("lines as points", ["{raster}", "{lines}", "--model", "{model}", *OUT], "give a point layer"),
        s("points without CRS", ["{raster}", "{nocrs_points}", "--model", "{model}", *OUT], "no CRS"),
        s("no point on the raster", ["{raster}", "{far}", "--model", "{model}", *OUT], "lies inside"),
        s("CSV as points", ["{raster}", "{csv}", "--model", "{model}", *OUT], "no geometries"),
        s("text file as points", ["{raster}", "{text}", "--model", "{model}", *OUT], "cannot read point layer"),
        s("raster as points", ["{raster}", "{raster}", "--model", "{model}", *OUT], "point layer"),
        s("two layers, no --layer", ["{raster}", "{two_layers}", "--model", "{model}", *OUT], "choose one with --layer"),
        s("unknown --layer", [*SEG, *OUT, "--layer", "c"], "no layer 'c'"),
        s("unknown --instance-field", [*SEG, *OUT, "--instance-field", "obj"], "--instance-field 'obj' is not a field"),
        s("unknown --label-field", [*SEG, *OUT, "--label-field", "lab"], "--label-field 'lab' is not a field"),
        s("unknown --class-field", [*SEG, *OUT, "--class-field", "kind"], "--class-field 'kind' is not a field"),
        s("label field not 0/1", ["{raster}", "{labels}", "--model", "{model}", *OUT, "--label-field", "flag"],
          "use 1 for positive"),
        s("only negative clicks", ["{raster}", "{negatives}", "--model", "{model}", *OUT, "--label-field", "lab"],
          "positive point"),
        s("missing checkpoint", ["{raster}", "{points}", "--model", "{out}/none.pth", *OUT], "does not exist"),
        s("unknown model name", ["{raster}", "{points}", "--model", "vit_q", *OUT], "vit_q"),
        s("not a checkpoint", ["{raster}", "{points}", "--model", "{junk_model}", *OUT], "not a SAM checkpoint"),
        s("text file as checkpoint", ["{raster}", "{points}", "--model", "{text}", *OUT], "not a SAM checkpoint"),
        s("model file without arch", ["{raster}", "{points}", "--model", "{no_arch}", *OUT], "without a readable arch"),
        s("--model-type mismatch", [*SEG, *OUT, "--model-type", "vit_l"], "drop --model-type"),
        s("--model-type unknown", [*SEG, *OUT, "--model-type", "vit_x"], "--model-type 'vit_x' is not one of"),
        s("missing adapter", [*SEG, *OUT, "--adapter", "{out}/none.adapter.pt"], "adapter .* does not exist"),
        s("junk adapter", [*SEG, *OUT, "--adapter", "{adapter_file}"], "not a PointSAM adapter"),
        s("adapter without base", [*SEG, *OUT, "--adapter", "{no_base}"], "does not record its base model"),
        s("adapter of another base", [*SEG, *OUT, "--adapter", "{other_base}"], "was trained on vit_b"),
        s("--device unknown", [*SEG, *OUT, "--device", "tpu"], "--device 'tpu' is not a device"),
        s("--bands 4 of 3", [*SEG, *OUT, "--bands", "4"], "band 4 does not exist"),
        s("--bands 0", [*SEG, *OUT, "--bands", "0"], "1-based"),
        s("--bands two", [*SEG, *OUT, "--bands", "1,2"], "names 2 bands"),
        s("--bands text", [*SEG, *OUT, "--bands", "red"], "--bands 'red' is not understood"),
        s("--bands -1", [*SEG, *OUT, "--bands=-1"], "1-based"),
        s("--stretch reversed", [*SEG, *OUT, "--stretch", "98,2"], "--stretch '98,2' needs"),
        s("--stretch text", [*SEG, *OUT, "--stretch", "loud"], "--stretch 'loud' is not understood"),
        s("--stretch over 100", [*SEG, *OUT, "--stretch", "0,200"], "needs 0 <= low < high <= 100"),
        s("--nodata text", [*SEG, *OUT, "--nodata", "none"], "--nodata 'none' is not a number"),
        s("--nodata inf", [*SEG, *OUT, "--nodata", "inf"], "--nodata inf is not a finite number"),
        s("--assume-crs unknown", [*SEG, *OUT, "--assume-crs", "EPSG:999999"], "--assume-crs 'EPSG:999999' is not a CRS"),
        s("--assume-crs text", ["{nocrs}", "{points}", "--model", "{model}", *OUT, "--assume-crs", "utm"], "is not a CRS"),
        s("--out-crs unknown", [*SEG, *OUT, "--out-crs", "EPSG:999999"], "--out-crs 'EPSG:999999' is not a CRS"),
        s("--out-crs text", [*SEG, *OUT, "--out-crs", "EPSG:abc"], "--out-crs .EPSG:abc. is not a CRS"),
    ]
    numbers = [("--chip-scale", v, "--chip-scale") for v in ("0", "-1", "1e6", "inf", "nan", "two", "0.1")]
    numbers += [("--calibration-iou", v, "--calibration-iou") for v in ("5", "-1", "nan", "x")]
    numbers += [("--min-area", v, "--min-area") for v in ("-5", "nan", "inf", "big")]
    numbers += [("--max-hole-area", v, "--max-hole-area") for v in ("-1", "nan", "-inf")]
    numbers += [("--simplify", v, "--simplify") for v in ("-1", "inf", "nan")]
    cases += [s(f"{flag} {value}", [*SEG, *OUT, f"{flag}={value}"], f"{re.escape(expect)} .*(number|range)")
              for flag, value, expect in numbers]
    cases += [
        s("-o missing folder", [*SEG, "-o", "{out}/no/out.gpkg"], "folder .* does not exist"),
        s("-o is a folder", [*SEG, "-o", "{out}"], "is a folder"),
        s("-o a folder named .gpkg", [*SEG, "-o", "{out}/dir.gpkg"], "is a folder", _subfolder("dir.gpkg")),
        s("-o not .gpkg", [*SEG, "-o", "{out}/out.shp"], "must end in .gpkg"),
        s("-o under a file", [*SEG, "-o", "{a_file}/out.gpkg"], "does not exist"),
        s("-o a 300-character name", [*SEG, "-o", "{out}/{long}"], SHORTER),
        s("-o in a folder of a 300-character name", [*SEG, "-o", "{out}/" + "d" * 300 + "/out.gpkg"], SHORTER),
        s("-o a file of another kind", [*SEG, "-o", "{out}/notes.gpkg", "--overwrite"], "not a GeoPackage",
          _not_a_geopackage),
        s("-o has the run's layers", [*SEG, "-o", "{out}/earlier.gpkg"], r"already has layer\(s\) instances",
          _runs_layers),
        s("-o the points file", [*SEG, "-o", "{points}"], "is the same file as POINTS"),
        s("--report same as -o", [*SEG, *OUT, "--report", "{out}/out.gpkg"], "is the same file as -o"),
        s("--report same as -o, existing GeoPackage", [*SEG, "-o", "{out}/project.gpkg", "--report",
          "{out}/project.gpkg", "--overwrite"], "same file as -o", _users_geopackage),
        s("--report missing folder", [*SEG, *OUT, "--report", "{out}/no/run.json"], "folder .* does not exist"),
        s("--report is a folder", [*SEG, *OUT, "--report", "{out}"], "--report .* is a folder"),
        s("--report exists", [*SEG, *OUT, "--report", "{out}/run.json"], "--report .* exists; pass --overwrite",
          _existing_report),
        s("--report is the raster", [*SEG, *OUT, "--report", "{raster}"], "same file as RASTER"),
        s("--report is the points", [*SEG, *OUT, "--report", "{points}"], "same file as POINTS"),
        s("--report a 300-character name", [*SEG, *OUT, "--report", "{out}/" + "r" * 300], SHORTER),
        s("--cache-dir is a file", [*SEG, *OUT, "--cache-dir", "{a_file}"], "--cache-dir .* is a file"),
        s("--cache-dir under a file", [*SEG, *OUT, "--cache-dir", "{a_file}/cache"], "--cache-dir .* cannot be created"),
        s("missing -o", [*SEG], "Missing option '-o'"),
        s("missing POINTS", ["{raster}"], "Missing argument 'POINTS'"),
        s("unknown option", [*SEG, *OUT, "--colour", "red"], "No such option"),
        s("extra argument", [*SEG, *OUT, "extra"], "unexpected extra argument"),
        s("flag given a value", [*SEG, *OUT, "--overwrite=yes"], "does not take a value"),
    ]
    return cases


EV = ["{pred}", "{truth}"]


def _evaluate_cases():
    e = lambda id, args, expect, setup=None: Case(f"evaluate: {id}", "evaluate", args, expect, setup)  # noqa: E731
    return [
        e("missing predictions", ["{out}/none.gpkg", "{truth}"], "predictions file .* does not exist"),
        e("missing truth", ["{pred}", "{out}/none.gpkg"], "truth file .* does not exist"),
        e("missing points", [*EV, "--points", "{out}/none.gpkg"], "points file .* does not exist"),
        e("a point layer as predictions", ["{points}", "{truth}", "--pred-layer", "p"], "hold point, not polygons"),
        e("a raster as truth", ["{pred}", "{raster}"], "truth file .* is not a vector file"),
        e("points as truth", ["{pred}", "{points}"], "hold point, not polygons"),
        e("polygons as points", [*EV, "--points", "{truth}"], "hold polygon, not points"),
        e("CSV as truth", ["{pred}", "{csv}"], "hold no geometries"),
        e("text file as predictions", ["{text}", "{truth}"], "not a vector file"),
        e("predictions is a folder", ["{out}", "{truth}"], "predictions file"),
        e("predictions without instances", ["{truth}", "{truth}"], "has no layer 'instances'"),
        e("unknown --pred-layer", [*EV, "--pred-layer", "boxes"], "has no layer 'boxes'"),
        e("unknown --truth-layer", [*EV, "--truth-layer", "roofs"], "has no layer 'roofs'"),
        e("unknown --points-layer", [*EV, "--points", "{points}", "--points-layer", "clicks"], "has no layer 'clicks'"),
        e("truth without CRS", ["{pred}", "{truth_nocrs}"], "have no CRS"),
        e("predictions without point_fid", ["{pred_no_fid}", "{truth}", "--points", "{points}"], "no point_fid field"),
        e("predictions without a grid", ["{pred_no_grid}", "{truth}"], "does not record its raster grid"),
        e("no truth polygon", ["{pred}", "{truth_empty}"], "truth .* has no polygons"),
        e("truth of another area", ["{pred}", "{truth_far}"], "no truth polygon of .* lies on the raster"),
        e("no click", [*EV, "--points", "{empty}"], "points .* have no features"),
        e("clicks of another area", [*EV, "--points", "{far}"], "no point of .* lies on the raster"),
        e("missing --raster", [*EV, "--raster", "{out}/none.tif"], "raster .* does not exist"),
        e("text file as --raster", [*EV, "--raster", "{text}"], "GDAL cannot read it"),
        e("--raster without CRS", [*EV, "--raster", "{nocrs}"], "has no CRS"),
        e("--json into a missing folder", [*EV, "--json", "{out}/no/eval.json"], "folder .* does not exist"),
        e("--json is a folder", [*EV, "--json", "{out}"], "--json .* is a folder"),
        e("--json exists", [*EV, "--json", "{out}/run.json"], "--json .* exists; pass --overwrite", _existing_report),
        e("--json is the predictions", [*EV, "--json", "{pred}", "--overwrite"], "same file as PRED"),
        e("--json is the truth", [*EV, "--json", "{truth}", "--overwrite"], "same file as TRUTH"),
        e("--json a 300-character name", [*EV, "--json", "{out}/" + "j" * 300], SHORTER),
        e("missing TRUTH argument", ["{pred}"], "Missing argument 'TRUTH'"),
    ]


def _export_cases():
    x = lambda id, args, expect, setup=None: Case(f"export: {id}", "export", args, expect, setup)  # noqa: E731
    m = ["--model", "{model}"]
    return [
        x("missing adapter", [*m, "--adapter", "{out}/none.adapter.pt", "-o", "{out}/merged.pt"], "does not exist"),
        x("junk adapter", [*m, "--adapter", "{adapter_file}", "-o", "{out}/merged.pt"], "not a PointSAM adapter"),
        x("adapter without base", [*m, "--adapter", "{no_base}", "-o", "{out}/merged.pt"], "does not record its base"),
        x("adapter of another base", [*m, "--adapter", "{other_base}", "-o", "{out}/merged.pt"], "was trained on"),
        x("missing model", ["--model", "{out}/none.pth", "--adapter", "{other_base}", "-o", "{out}/merged.pt"],
          "does not exist"),
        x("into a missing folder", [*m, "--adapter", "{other_base}", "-o", "{out}/no/merged.pt"], "does not exist"),
        x("-o is a folder", [*m, "--adapter", "{other_base}", "-o", "{out}"], "is a folder"),
        x("-o exists", [*m, "--adapter", "{other_base}", "-o", "{out}/merged.pt"], "exists; pass --overwrite",
          _existing_file("merged.pt")),
        x("-o is the adapter", [*m, "--adapter", "{other_base}", "-o", "{other_base}", "--overwrite"],
          "same file as --adapter"),
        x("-o is the model", [*m, "--adapter", "{other_base}", "-o", "{model}", "--overwrite"], "same file as --model"),
        x("-o a 300-character name", [*m, "--adapter", "{other_base}", "-o", "{out}/" + "m" * 300], SHORTER),
        x("missing --adapter", [*m, "-o", "{out}/merged.pt"], "Missing option '--adapter'"),
    ]


def _demo_cases():
    d = lambda id, args, expect, setup=None: Case(f"demo: {id}", "demo", args, expect, setup)  # noqa: E731
    return [
        d("--out is a file", ["--out", "{a_file}"], "--out .* is a file"),
        d("--out under a file", ["--out", "{a_file}/demo"], "cannot be created"),
        d("missing --model", ["--out", "{out}/demo", "--model", "{out}/none.pth"], "does not exist"),
        d("unknown model name", ["--out", "{out}/demo", "--model", "vit_q"], "vit_q"),
    ]


def _serve_cases():
    v = lambda id, args, expect, setup=None: Case(f"serve: {id}", "serve", args, expect, setup)  # noqa: E731
    c = ["--connection-file", "{out}/serve.json"]
    return [
        v("--connection-file is a folder", ["--connection-file", "{out}"], "is a folder"),
        v("--connection-file under a file", ["--connection-file", "{a_file}/serve.json"], "does not exist"),
        v("--connection-file a 300-character name", ["--connection-file", "{out}/" + "c" * 300], SHORTER),
        v("--port out of range", [*c, "--port", "70000"], "70000 is not in the range"),
        v("--cache-mb 0", [*c, "--cache-mb", "0"], "--cache-mb 0 is out of range"),
        v("--max-parallel 0", [*c, "--max-parallel", "0"], "--max-parallel 0 is out of range"),
        v("--host remote without --allow-remote", [*c, "--host", "10.1.2.3", "--model", "{model}"], "--allow-remote"),
        v("--allow-remote without --token", [*c, "--allow-remote", "--model", "{model}"], "needs --token"),
        v("--device unknown", [*c, "--device", "tpu"], "not a device"),
        v("--cache-dir is a file", [*c, "--cache-dir", "{a_file}"], "--cache-dir .* is a file"),
        v("--adapters-dir missing", [*c, "--adapters-dir", "{out}/none"], "--adapters-dir .* does not exist"),
        v("--output-root missing", [*c, "--output-root", "{out}/none"], "--output-root .* does not exist"),
        v("--model missing", [*c, "--model", "{out}/none.pth"], "does not exist"),
        v("--adapter of another base", [*c, "--model", "{model}", "--adapter", "{other_base}"], "was trained on"),
    ]


TR = ["--raster", "{raster}", "--points", "{points}", "--model", "{model}"]


def _train_cases():
    t = lambda id, args, expect, setup=None: Case(f"train: {id}", "train", args, expect, setup)  # noqa: E731
    o = ["-o", "{out}/region.adapter.pt"]
    numbers = [("--lr", "-1"), ("--lr", "nan"), ("--lr", "0"), ("--lr", "2"), ("--steps", "0"), ("--devices", "0"),
               ("--checkpoint-every", "0"), ("--val-every", "0"), ("--background", "-1"), ("--val-fraction", "1"),
               ("--rank", "0"), ("--seed", "-1"), ("--prototype-weight", "-1"), ("--anchor-weight", "inf"),
               ("--chip-scale", "0")]
    cases = [t(f"{flag} {value}", [*TR, *o, f"{flag}={value}"], f"{flag} .*(number|range)") for flag, value in numbers]
    return cases + [
        t("--accelerator foo", [*TR, *o, "--accelerator", "foo"], "--accelerator 'foo' is not one of"),
        t("--precision foo", [*TR, *o, "--precision", "foo"], "--precision 'foo' is not one of"),
        t("--accelerator gpu without one", [*TR, *o, "--accelerator", "gpu"], "cannot run here|no CUDA|GPU"),
        t("--blocks text", [*TR, *o, "--blocks", "all"], "--blocks 'all' is not understood"),
        t("missing raster", ["--raster", "{out}/none.tif", "--points", "{points}", *o], "does not exist"),
        t("missing points", ["--raster", "{raster}", "--points", "{out}/none.gpkg", *o], "does not exist"),
        t("text file as raster", ["--raster", "{text}", "--points", "{points}", *o], "cannot read raster"),
        t("CSV as points", ["--raster", "{raster}", "--points", "{csv}", *o], "no geometries"),
        t("raster as points", ["--raster", "{raster}", "--points", "{raster}", *o], "cannot be read"),
        t("--val-polygons are points", [*TR, *o, "--val-polygons", "{points}"], "--val-polygons .* holds point, not polygons"),
        t("unpaired inputs", [*TR, "--raster", "{raster}", *o], "in pairs"),
        t("-o exists", [*TR, "-o", "{out}/region.adapter.pt"], "exists; pass --overwrite",
          _existing_file("region.adapter.pt")),
        t("-o into a missing folder", [*TR, "-o", "{out}/no/region.adapter.pt"], "does not exist"),
        t("-o is .", [*TR, "-o", "."], "is a folder"),
        t("-o is /", [*TR, "-o", "/"], "is a folder"),
        t("-o not .adapter.pt", [*TR, "-o", "{out}/region.pt"], "must end in .adapter.pt"),
        t("--resume without a checkpoint", [*TR, *o, "--resume"], "no checkpoint"),
        t("--val-polygons unpaired", [*TR, *o, "--val-polygons", "{truth}", "--val-polygons", "{truth}"], "one --val-polygons"),
        t("--val-polygons missing", [*TR, *o, "--val-polygons", "{out}/none.gpkg"], "does not exist"),
    ]


def _api_cases():
    a = lambda id, route, body, expect, status=422, method="POST", setup=None, **kw: Case(  # noqa: E731
        f"api: {id}", "api", expect=expect, route=route, body=body, status=status, method=method, setup=setup, **kw)
    seg = {"raster": "{raster}", "points": "{points}", "output": "{out}/out.gpkg"}
    train = {"rasters": ["{raster}"], "points": ["{points}"], "output": "{out}/region.adapter.pt"}
    pred = {"raster": "{raster}", "positive": [[500025.0, 3999975.0]]}
    cases = [
        a("unknown route", "/v1/nothing", None, "no such route", 404, "GET"),
        a("wrong method", "/v1/health", None, "does not take that method", 405, "DELETE"),
        a("no such job", "/v1/jobs/123", None, "no job 123", 404, "GET"),
        a("cancel no such job", "/v1/jobs/123", None, "no job 123", 404, "DELETE"),
        a("body not UTF-8", "/v1/predict", b"\xff\xfe{", "cannot be read as JSON", 400),
        a("body not JSON", "/v1/jobs/segment", b"{bad json", "is not JSON \\(at character 1\\)", 400),
        a("deeply nested JSON", "/v1/predict", b"[" * 100_000 + b"]" * 100_000, "cannot be read as JSON", 400),
        a("body over the cap (chunked)", "/v1/predict", "chunked", "over the size limit", 413),
        a("predict: missing raster", "/v1/predict", {**pred, "raster": "{out}/none.tif"}, "does not exist"),
        a("predict: chip_scale 0", "/v1/predict", {**pred, "chip_scale": 0}, "chip_scale"),
        a("predict: no click", "/v1/predict", {"raster": "{raster}"}, "click|box"),
        a("predict: bands 0", "/v1/predict", {**pred, "bands": [0]}, "1-based"),
        a("predict: unknown crs", "/v1/predict", {**pred, "crs": "EPSG:999999"}, "CRS|crs"),
        a("prefetch: missing raster", "/v1/prefetch", {"raster": "{out}/none.tif", "point": [500025.0, 3999975.0]},
          "does not exist"),
        a("segment: output folder missing", "/v1/jobs/segment", {**seg, "output": "{out}/no/out.gpkg"},
          "does not exist", 409),
        a("segment: output is a folder", "/v1/jobs/segment", {**seg, "output": "{out}"}, "is a folder", 409),
        a("segment: output not .gpkg", "/v1/jobs/segment", {**seg, "output": "{out}/out.shp"}, "must end in .gpkg", 409),
        a("segment: output is the points", "/v1/jobs/segment", {**seg, "output": "{points}"}, "same file", 409),
        a("segment: output has the run's layers", "/v1/jobs/segment", {**seg, "output": "{out}/earlier.gpkg"},
          "already has layer", 409, setup=_runs_layers),
        a("segment: min_area -5", "/v1/jobs/segment", {**seg, "min_area": -5}, "min_area"),
        a("segment: calibration_iou 5", "/v1/jobs/segment", {**seg, "calibration_iou": 5}, "calibration_iou"),
        a("segment: out_crs unknown", "/v1/jobs/segment", {**seg, "out_crs": "EPSG:999999"}, "not a CRS"),
        a("segment: missing points", "/v1/jobs/segment", {**seg, "points": "{out}/none.gpkg"}, "does not exist"),
        a("segment: points and geojson", "/v1/jobs/segment", {**seg, "points_geojson": {"type": "FeatureCollection",
          "features": []}}, "not both"),
        a("segment: text raster", "/v1/jobs/segment", {**seg, "raster": "{text}"}, "cannot read raster"),
        a("segment: unknown field", "/v1/jobs/segment", {**seg, "colour": "red"}, "colour"),
        a("train: output .", "/v1/jobs/train", {**train, "output": "."}, "is a folder", 409),
        a("train: output /", "/v1/jobs/train", {**train, "output": "/"}, "is a folder", 409),
        a("train: missing raster", "/v1/jobs/train", {**train, "rasters": ["{out}/none.tif"]}, "does not exist"),
        a("train: text raster", "/v1/jobs/train", {**train, "rasters": ["{text}"]}, "cannot read raster"),
        a("train: CSV points", "/v1/jobs/train", {**train, "points": ["{csv}"]}, "no geometries"),
        a("train: lr -1", "/v1/jobs/train", {**train, "lr": -1}, "lr"),
        a("train: accelerator foo", "/v1/jobs/train", {**train, "accelerator": "foo"}, "accelerator"),
        a("train: output exists", "/v1/jobs/train", train, "exists; pass --overwrite", 409,
          setup=_existing_file("region.adapter.pt")),
        a("evaluate: missing predictions", "/v1/evaluate", {"pred": "{out}/none.gpkg", "truth": "{truth}"},
          "does not exist"),
        a("evaluate: raster as truth", "/v1/evaluate", {"pred": "{pred}", "truth": "{raster}"}, "not a vector file"),
        a("evaluate: clicks of another area", "/v1/evaluate", {"pred": "{pred}", "truth": "{truth}", "points": "{far}"},
          "no point of .* lies on the raster"),
        a("segment: output outside --output-root", "/v1/jobs/segment", {**seg, "output": "{a_file}.gpkg"},
          "outside .* --output-root", 403),
    ]
    return cases


CASES = _segment_cases() + _evaluate_cases() + _export_cases() + _demo_cases() + _serve_cases() + _train_cases() \
    + _api_cases()


# -- running a case ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model):
    base = tmp_path_factory.mktemp("bad_inputs")
    return base, _world(base, tiny_model)


@pytest.fixture(scope="module")
def api(world, tiny_model):
    from pointsam_engine.api.app import create_app
    from pointsam_engine.api.engine import Engine
    from pointsam_engine.config import SegmentConfig

    engine = Engine(SegmentConfig(model=str(tiny_model), device="cpu", cache_mb=16))
    with TestClient(create_app(engine, TOKEN, allowed_hosts=("testserver",)), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield client, engine


def _fill(value, paths: dict):
    if isinstance(value, str):
        return value.format(**paths)
    if isinstance(value, list):
        return [_fill(v, paths) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, paths) for k, v in value.items()}
    return value


def _state(base: Path) -> Dict[str, str]:
    """Every file under ``base`` (hidden ones too) with its sha256, and every folder."""
    state = {}
    for root, dirs, files in os.walk(base):
        for name in dirs:
            state[os.path.join(root, name)] = "folder"
        for name in files:
            path = os.path.join(root, name)
            state[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return state


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_keeps_the_promise(case: Case, world, request, monkeypatch):
    base, paths = world
    folder = base / "cases" / f"{CASES.index(case):03d}"
    folder.mkdir(parents=True)
    paths = {**paths, "out": str(folder)}
    if case.setup:
        case.setup(folder, paths)
    monkeypatch.chdir(folder)
    before = _state(base)
    KEPT[case.id] = False
    if case.command == "api":
        line = _call_api(case, paths, request.getfixturevalue("api"))
    else:
        result = CliRunner().invoke(main, [case.command, *_fill(list(case.args), paths)], prog_name="pointsam")
        assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
        assert isinstance(result.exception, SystemExit), repr(result.exception)
        line = _one_error_line(result.stderr)
    assert re.search(case.expect, line), line
    assert _state(base) == before, "a file was written or changed"
    KEPT[case.id] = True


def _call_api(case: Case, paths: dict, api) -> str:
    client, engine = api
    kwargs = {}
    if case.body == "chunked":
        kwargs["content"] = (b" " * 2**20 for _ in range(9))
        kwargs["headers"] = {"Content-Type": "application/json"}
    elif isinstance(case.body, bytes):
        kwargs["content"] = case.body
        kwargs["headers"] = {"Content-Type": "application/json"}
    elif case.body is not None:
        kwargs["json"] = _fill(case.body, paths)
    engine.output_root = str(Path(paths["out"])) if "output-root" in case.id else None
    try:
        response = client.request(case.method, case.route, **kwargs)
    finally:
        engine.output_root = None
    assert response.status_code == case.status, f"{response.status_code}: {response.text[:400]}"
    body = response.json()
    assert set(body) == {"error", "message"}, body
    assert "\n" not in body["message"] and "Traceback" not in body["message"]
    return body["message"]


def test_the_table_covers_every_command_and_prints_its_figures(capsys):
    commands = {c.command for c in CASES}
    assert commands == {"segment", "evaluate", "export", "demo", "serve", "train", "api"}
    assert len(CASES) >= 150
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    quoted = re.search(r"bad inputs: (\d+) cases, (\d+) kept the promise", readme)
    assert quoted and int(quoted.group(1)) == len(CASES), "the README's reliability paragraph quotes another table"
    if len(KEPT) == len(CASES):  # the whole table ran in this session
        kept = sum(KEPT.values())
        with capsys.disabled():
            print(f"\nbad inputs: {len(CASES)} cases, {kept} kept the promise "
                  f"(one error line, exit 2 or a 4xx, nothing written)")
        assert kept == len(CASES)
