"""One declaration per option (CLI, API, Python refuse the same values), progress bars only on a terminal,
temporary files swept, errors met mid-run as one line with nothing written, cancel until the rename, and the
server's bound on concurrent clicks."""

from __future__ import annotations

import errno
import math
import os
import threading
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from click.testing import CliRunner
from fastapi.testclient import TestClient
from pydantic import ValidationError

from pointsam_engine import output as output_module
from pointsam_engine.api import schemas
from pointsam_engine.cli import main
from pointsam_engine.config import SegmentConfig
from pointsam_engine.errors import Cancelled, OptionError, OutputError
from pointsam_engine.jobs import CANCELLED, SUCCEEDED
from pointsam_engine.options import NUMBERS
from pointsam_engine.output import TEMP_MARK, check_inside, sweep_temps, temp_path, write_geopackage
from pointsam_engine.pipeline import segment
from tests.conftest import Concurrency, write_points, write_raster
from tests.engine.test_output import sha256

TOKEN = "validate-token"


def _probes(spec):
    """Values at and just beyond each bound, and the non-finite ones."""
    values = [math.nan, math.inf, -math.inf, 0, 1, 0.5, 1e9, -1e9]
    for bound in (spec.ge, spec.gt, spec.le, spec.lt):
        if bound is not None:
            values += [bound, bound - 1e-6, bound + 1e-6, bound - 1, bound + 1]
    return values


def _python_accepts(spec, value) -> bool:
    try:
        spec.check(value)
        return True
    except OptionError:
        return False


@pytest.mark.parametrize("model, names", [
    (schemas.SegmentJobRequest, ["chip_scale", "calibration_iou", "min_area", "max_hole_area", "simplify", "nodata"]),
    (schemas.TrainJobRequest, ["steps", "lr", "seed", "rank", "val_fraction", "val_every", "checkpoint_every",
                               "background", "prototype_weight", "anchor_weight", "chip_scale", "nodata"]),
])
def test_the_api_and_the_python_api_accept_exactly_the_same_values(model, names):
    required = ({"raster": "r.tif", "output": "o.gpkg"} if model is schemas.SegmentJobRequest
                else {"rasters": ["r.tif"], "points": ["p.gpkg"], "output": "o.adapter.pt"})
    for name in names:
        spec = NUMBERS[name]
        for value in _probes(spec):
            if spec.kind is int and isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
                continue  # pydantic and Python both refuse fractions for whole numbers; JSON has no NaN
            try:
                model(**required, **{name: value})
                api = True
            except ValidationError:
                api = False
            assert api == _python_accepts(spec, value), (name, value, api)


def test_the_cli_refuses_what_the_config_refuses_with_the_same_line(tmp_path):
    with pytest.raises(OptionError) as python:
        SegmentConfig(min_area=-5)
    result = CliRunner().invoke(main, ["segment", "r.tif", "p.gpkg", "-o", str(tmp_path / "o.gpkg"), "--min-area=-5"])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {python.value}"
    assert not any(tmp_path.iterdir())


@pytest.fixture
def tiny_scene(tmp_path):
    raster = write_raster(tmp_path / "r.tif", np.random.default_rng(0).integers(0, 255, (3, 100, 100), dtype=np.uint8))
    points = write_points(tmp_path / "p.gpkg", [(500025.0, 3999975.0)])
    return raster, points


def test_no_progress_bar_when_stderr_is_not_a_terminal_unless_asked(tmp_path, tiny_scene, tiny_model):
    raster, points = tiny_scene
    args = ["segment", str(raster), str(points), "--model", str(tiny_model)]
    plain = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "a.gpkg")])
    assert plain.exit_code == 0, plain.output
    assert plain.stderr == "" and "1 instances" in plain.stdout
    forced = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "b.gpkg"), "--progress"])
    assert forced.exit_code == 0 and "done" in forced.stderr and "|" in forced.stderr
    quiet = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "c.gpkg"), "--progress", "-q"])
    assert quiet.exit_code == 0 and "|" not in quiet.stderr


def test_evaluate_leaves_no_aux_xml_beside_the_geopackage_it_reads(tmp_path, tiny_scene, tiny_model):
    raster, points = tiny_scene
    out = tmp_path / "out.gpkg"
    assert CliRunner().invoke(main, ["segment", str(raster), str(points), "-o", str(out), "--model",
                                     str(tiny_model), "-q"]).exit_code == 0
    truth = tmp_path / "truth.gpkg"
    gpd.GeoDataFrame(geometry=[shapely.box(500020, 3999970, 500030, 3999980)], crs="EPSG:32633").to_file(truth)
    listing = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(main, ["evaluate", str(out), str(truth), "--points", str(points)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == listing


def _leftover(target: Path, pid: int, age: float) -> Path:
    path = target.with_name(f".{target.name}.{pid}.0a1b2c3d{TEMP_MARK}.gpkg")
    path.write_bytes(b"half a file")
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_temporary_files_of_dead_runs_are_swept_and_only_those(tmp_path):
    target = tmp_path / "out.gpkg"
    dead = _leftover(target, 2**22 + 12345, 3600)  # no such process
    alive = _leftover(target, os.getppid(), 3600)  # a running process may still be writing it
    new = _leftover(target, 2**22 + 12346, -3600)  # newer than this process
    other = _leftover(tmp_path / "other.gpkg", 2**22 + 12345, 3600)
    mine = tmp_path / f".out.gpkg.keep{TEMP_MARK}"  # not the pattern: no pid
    mine.write_bytes(b"x")
    assert sweep_temps(target) == [dead]
    assert not dead.exists() and alive.exists() and new.exists() and other.exists() and mine.exists()
    assert temp_path(target).name.startswith(f".out.gpkg.{os.getpid()}.")


def test_a_run_sweeps_what_a_killed_run_left_beside_its_target(tmp_path, tiny_scene, stub):
    raster, points = tiny_scene
    target = tmp_path / "out.gpkg"
    dead = _leftover(target, 2**22 + 999, 3600)
    segment(raster, points, target, predictor=stub)
    assert not dead.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gpkg", "p.gpkg", "r.tif"]


@pytest.mark.parametrize("where", ["first layer", "second layer"])
def test_ctrl_c_while_writing_leaves_no_file(tmp_path, tiny_scene, stub, monkeypatch, where):
    raster, points = tiny_scene
    real, calls = output_module.pyogrio.write_dataframe, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if where == "second layer" and len(calls) == 1:
            return real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(output_module.pyogrio, "write_dataframe", interrupted)
    with pytest.raises(KeyboardInterrupt):
        segment(raster, points, tmp_path / "out.gpkg", predictor=stub)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.gpkg", "r.tif"]


# -- errors met mid-run: one line, exit 2, nothing written --------------------------------------------------------

def _run_cli(args):
    result = CliRunner().invoke(main, args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_disk_full_while_writing_the_geopackage(tmp_path, tiny_scene, tiny_model, monkeypatch):
    raster, points = tiny_scene

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output_module.pyogrio, "write_dataframe", full)
    line = _run_cli(["segment", str(raster), str(points), "-o", str(tmp_path / "out.gpkg"), "--model", str(tiny_model)])
    assert "no space left on the device" in line and "free some space" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.gpkg", "r.tif"]


def test_disk_full_while_writing_the_report_takes_the_new_geopackage_with_it(tmp_path, tiny_scene, tiny_model,
                                                                             monkeypatch):
    from pointsam_engine import output

    raster, points = tiny_scene

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output.json, "dump", full)
    line = _run_cli(["segment", str(raster), str(points), "-o", str(tmp_path / "out.gpkg"), "--model", str(tiny_model),
                     "--report", str(tmp_path / "run.json")])
    assert "no space left on the device" in line and "run.json" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.gpkg", "r.tif"]


def test_disk_full_in_sqlite_while_writing_into_a_users_geopackage(tmp_path, tiny_scene, stub, monkeypatch):
    from tests.engine.test_output import user_geopackage

    raster, points = tiny_scene
    out = user_geopackage(tmp_path / "project.gpkg")
    digest = sha256(out)

    def full(*_a, **_k):
        raise output_module.sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(output_module, "_copy_back", full)
    with pytest.raises(OutputError, match="no space left on the device"):
        segment(raster, points, out, predictor=stub)
    assert sha256(out) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.gpkg", "project.gpkg", "r.tif"]


class _VanishingSource:
    """A dataset whose file goes away after ``good`` reads (a network drive dropping, a VRT source deleted)."""

    def __init__(self, src, good: int):
        self._src, self._left = src, good

    def read(self, *args, **kwargs):
        import rasterio.errors

        self._left -= 1
        if self._left < 0:
            raise rasterio.errors.RasterioIOError("Read failed: /data/ortho.tif: No such file or directory")
        return self._src.read(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._src, name)


def test_a_source_that_vanishes_mid_run(tmp_path, tiny_scene, tiny_model, monkeypatch):
    from pointsam_engine import raster as raster_module

    raster, points = tiny_scene
    real_open = raster_module.rasterio.open
    monkeypatch.setattr(raster_module.rasterio, "open", lambda *a, **k: _VanishingSource(real_open(*a, **k), 2))
    line = _run_cli(["segment", str(raster), str(points), "-o", str(tmp_path / "out.gpkg"), "--model", str(tiny_model)])
    assert "cannot read raster" in line and "nothing was written" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.gpkg", "r.tif"]


def test_torch_failing_to_write_an_export(tmp_path, tiny_model, monkeypatch):
    import torch

    from pointsam_engine.sam import adapter as adapter_module

    def failing(*_a, **_k):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    import dataclasses

    monkeypatch.setattr(adapter_module, "apply_adapter", lambda model, path, **_: dataclasses.replace(model, adapter="a@0"))
    monkeypatch.setattr(torch, "save", failing)
    (tmp_path / "a.adapter.pt").write_bytes(b"")
    line = _run_cli(["export", "--model", str(tiny_model), "--adapter", str(tmp_path / "a.adapter.pt"),
                     "-o", str(tmp_path / "merged.pt")])
    assert "cannot write" in line and "merged.pt" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.adapter.pt"]


def test_an_os_error_met_mid_run_is_one_line(tmp_path, tiny_scene, tiny_model, monkeypatch):
    from pointsam_engine import pipeline

    raster, points = tiny_scene

    def gone(*_a, **_k):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(points))

    monkeypatch.setattr(pipeline, "read_points", gone)
    line = _run_cli(["segment", str(raster), str(points), "-o", str(tmp_path / "out.gpkg"), "--model", str(tiny_model)])
    assert "No such file or directory" in line and "nothing was written" in line


# -- cancel until the rename ----------------------------------------------------------------------------------------

def test_a_cancel_before_the_rename_stops_the_run_and_writes_nothing(tmp_path, tiny_scene, stub):
    from pointsam_engine.jobs import CancelToken

    raster, points = tiny_scene
    token = CancelToken()

    def progress(_fraction, stage):
        if stage == "writing":
            assert token.request()

    with pytest.raises(Cancelled):
        segment(raster, points, tmp_path / "out.gpkg", predictor=stub, cancel=token, progress=progress)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.gpkg", "r.tif"]


def test_the_api_answers_409_to_a_cancel_that_comes_too_late_and_200_before(tiny_model):
    from pointsam_engine.api.app import create_app
    from pointsam_engine.api.engine import Engine

    engine = Engine(SegmentConfig(model=str(tiny_model), device="cpu", cache_mb=16))
    committed, release, started = threading.Event(), threading.Event(), threading.Event()

    def late(progress, cancel):
        cancel.commit()
        committed.set()
        release.wait(10)
        return {}

    def early(progress, cancel):
        started.set()
        while not cancel.is_set():
            time.sleep(0.01)
        cancel.commit()  # raises Cancelled: nothing written
        return {}

    with TestClient(create_app(engine, TOKEN, allowed_hosts=("testserver",))) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        job = engine.jobs.submit("segment", late)
        assert committed.wait(10)
        refused = client.delete(f"/v1/jobs/{job.id}")
        assert refused.status_code == 409 and set(refused.json()) == {"error", "message"}
        release.set()
        job2 = engine.jobs.submit("segment", early)
        assert started.wait(10)
        assert client.delete(f"/v1/jobs/{job2.id}").status_code == 200
        for _ in range(100):
            if job2.state == CANCELLED:
                break
            time.sleep(0.05)
        assert job.state == SUCCEEDED and job2.state == CANCELLED


# -- the server: bounded clicks, the output root ----------------------------------------------------------------------

@pytest.mark.parametrize("max_parallel", [1, 2])
def test_clicks_run_the_encoder_at_most_max_parallel_at_once(tiny_model, tiny_scene, max_parallel):
    from pointsam_engine.api.app import create_app
    from pointsam_engine.api.engine import Engine

    raster, _ = tiny_scene
    engine = Engine(SegmentConfig(model=str(tiny_model), device="cpu", cache_mb=16), max_parallel=max_parallel)
    meter = Concurrency()

    def slow_prefetch(*_a, **_k):
        with meter:
            time.sleep(0.2)
        return True

    engine.clicks.prefetch = slow_prefetch
    with TestClient(create_app(engine, TOKEN, allowed_hosts=("testserver",))) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(client.post(
            "/v1/prefetch", json={"raster": str(raster), "point": [500025.0, 3999975.0]}).status_code))
            for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert answers == [200] * 5  # the others waited their turn, none was refused
    assert meter.peak == max_parallel


def test_the_output_root_confines_outputs_through_links_too(tmp_path):
    root = tmp_path / "jobs"
    root.mkdir()
    check_inside(root / "a" / "out.gpkg", root)
    (root / "escape").symlink_to(tmp_path)
    with pytest.raises(OutputError, match="outside"):
        check_inside(root / "escape" / "out.gpkg", root)
    with pytest.raises(OutputError, match="--output-root"):
        check_inside(tmp_path / "out.gpkg", root)


def test_writing_into_a_file_named_after_a_too_long_name_is_refused_before_work(tmp_path):
    with pytest.raises(OutputError, match="too long"):
        write_geopackage({}, tmp_path / ("x" * 250 + ".gpkg"), overwrite=False)


def test_pointsam_alone_prints_its_help_and_usage_errors_are_one_line():
    alone = CliRunner().invoke(main, [], prog_name="pointsam")
    assert alone.exit_code == 0 and "Usage: pointsam" in alone.output
    wrong = CliRunner().invoke(main, ["segmnt"])
    assert wrong.exit_code == 2
    assert wrong.stderr.count("\n") == 1 and wrong.stderr.startswith("error: No such command 'segmnt'")


def test_sigterm_unwinds_like_ctrl_c_so_temporary_files_go(tmp_path):
    import signal

    from pointsam_engine.cli import guard
    from pointsam_engine.output import atomic_path

    target = tmp_path / "run.json"
    previous = signal.getsignal(signal.SIGTERM)

    def killed_mid_write():
        with atomic_path(target) as tmp:
            tmp.write_text("{")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)

    try:
        with pytest.raises(SystemExit) as exit_:
            guard(killed_mid_write)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exit_.value.code == 130
    assert not any(tmp_path.iterdir())


def test_a_full_cache_folder_only_costs_the_disk_copy(tmp_path, monkeypatch):
    from pointsam_engine.sam import cache as cache_module
    from pointsam_engine.sam.cache import EmbeddingCache

    cache = EmbeddingCache(16, str(tmp_path / "cache"))

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module.np, "save", full)
    cache.put("ab" * 32, np.zeros(4, np.float32))
    assert cache.get("ab" * 32) is not None  # still in memory
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_a_train_job_cancelled_at_its_last_step_writes_no_adapter(tmp_path, tiny_model):
    pytest.importorskip("lightning_fabric")
    from pointsam_engine.demo.scenes import render, write_scene
    from pointsam_engine.jobs import CancelToken
    from training.config import TrainConfig
    from training.loop import train
    from training.selftrain import SelfTrainOptions

    scene = write_scene(render("ships", 256, seed=7301), tmp_path, "ships")
    output = tmp_path / "region.adapter.pt"
    cfg = TrainConfig(rasters=[str(scene["raster"])], points=[str(scene["points"])], output=str(output),
                      model=str(tiny_model), steps=2, val_fraction=0.0, checkpoint_every=2, bank_size=4,
                      match_interval=2, target_chips=2, selftrain=SelfTrainOptions(max_objects=4))
    token = CancelToken()

    def progress(_fraction, stage):
        if stage == "step 2/2":  # the last step is done: only the adapter is left to write
            assert token.request()

    with pytest.raises(Cancelled):
        train(cfg, echo=lambda _: None, progress=progress, cancel=token)
    assert not output.exists()
    assert (tmp_path / "region.ckpt").is_file()  # the progress is kept for --resume
