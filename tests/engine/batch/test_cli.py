"""``pointsam batch``: bad input exits 2 with one line and writes nothing; a run against a ``dask scheduler`` and a
``dask worker`` started as separate processes on loopback."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import psutil
import pytest
import shapely
from click.testing import CliRunner

from pointsam_engine.cli import main
from tests.engine.batch.scenes import survey

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    return survey(tmp_path_factory.mktemp("cli"), size=512, seed=3)


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """The scene cut into 8 abutting tiles: more tasks than the cluster runs at once."""
    windows = [(col * 128, row * 256, 128, 256) for row in range(2) for col in range(4)]
    return survey(tmp_path_factory.mktemp("many"), size=512, seed=3, windows=windows)


def _case(tiles, tmp_path, case):
    out = tmp_path / "out.gpkg"
    rasters = str(tiles["tiles"][0].parent)
    if case == "output taken":
        out.write_bytes(b"not a geopackage")
    if case == "report taken":
        (tmp_path / "taken.json").write_text("{}")
    if case == "only a file that is not a raster":
        (tmp_path / "scan.tif").write_text("not a raster")
    if case == "points of another area":
        far = gpd.read_file(tiles["points"])
        far.geometry = far.geometry.translate(1e5, 1e5)
        far.to_file(tmp_path / "far.gpkg")
    if case == "work folder left":
        (tmp_path / "out.work").mkdir()
        (tmp_path / "out.work" / "00000-tile0.json").write_text("{}")
    args = {"no points": [str(tmp_path / "none.gpkg"), "-o", out, "--rasters", rasters],
            "no rasters": [tiles["points"], "-o", out, "--rasters", str(tmp_path / "none")],
            "workers and scheduler": [tiles["points"], "-o", out, "--rasters", rasters, "--workers", "2",
                                      "--scheduler", "tcp://127.0.0.1:1"],
            "output taken": [tiles["points"], "-o", out, "--rasters", rasters],
            "work folder left": [tiles["points"], "-o", out, "--rasters", rasters],
            "bad workers": [tiles["points"], "-o", out, "--rasters", rasters, "--workers", "0"],
            "report taken": [tiles["points"], "-o", out, "--rasters", rasters, "--report", tmp_path / "taken.json"],
            "report is output": [tiles["points"], "-o", out, "--rasters", rasters, "--report", out],
            "only a file that is not a raster": [tiles["points"], "-o", out, "--rasters", tmp_path / "scan.tif"],
            "points of another area": [tmp_path / "far.gpkg", "-o", out, "--rasters", rasters]}[case]
    return out, [str(a) for a in args]


@pytest.mark.parametrize("case", ["no points", "no rasters", "workers and scheduler", "output taken",
                                  "work folder left", "bad workers", "report taken", "report is output",
                                  "only a file that is not a raster", "points of another area"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tiles, tmp_path, case):
    out, args = _case(tiles, tmp_path, case)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = CliRunner().invoke(main, ["batch", *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert all(p.read_bytes() == data for p, data in files.items())


def _batch(points, out, rasters, *extra) -> list:
    return [str(BIN / "pointsam"), "batch", str(points), "-o", str(out), "--rasters", str(rasters), "--workers", "1",
            "-q", *map(str, extra)]


def _sigint_as_in_a_terminal() -> None:
    """A command started from a terminal has Ctrl-C's default action; a test run started in the background
    (``cmd &`` in a script, as CI runners do) ignores SIGINT, and its children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_keeps_the_finished_tasks_and_resume_runs_only_the_others(many, tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) once a task has finished: exit 130, one
    line naming --resume, the finished tasks kept, the user's GeoPackage untouched, no worker left behind."""
    out, work, report = tmp_path / "survey.gpkg", tmp_path / "survey.work", tmp_path / "report.json"
    gpd.GeoDataFrame({"name": ["mine"]}, geometry=[shapely.Point(0, 0)], crs="EPSG:4326").to_file(out, layer="roads")
    before = out.read_bytes()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_batch(many["points"], out, many["tiles"][0].parent), env=env, start_new_session=True,
                            preexec_fn=_sigint_as_in_a_terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        while proc.poll() is None and not list(work.glob("*.json")):
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        family = psutil.Process(proc.pid).children(recursive=True)
        workers = _workers_of(proc.pid)
        assert workers
        # the worker is held while the Ctrl-C lands, so however fast the tiles go, some are left to resume
        for worker in workers:
            worker.suspend()
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(2)
        for worker in workers:
            worker.resume()
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "--resume" in lines[0] and str(work) in lines[0], stderr
    assert out.read_bytes() == before
    _, alive = psutil.wait_procs(family, timeout=60)
    assert not alive, [p.cmdline() for p in alive]
    kept = {p.stem for p in work.glob("*.json")}
    assert 1 <= len(kept) < len(many["tiles"]) and all((work / f"{k}.gpkg").is_file() for k in kept)

    resumed = subprocess.Popen(_batch(many["points"], out, many["tiles"][0].parent, "--resume", "--report", report),
                               env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # in a session of its own, so that a timeout takes the batch's workers with it
        _, stderr = resumed.communicate(timeout=600)
    finally:
        if resumed.poll() is None:
            os.killpg(resumed.pid, signal.SIGKILL)
            resumed.wait()
    assert resumed.returncode == 0, stderr
    figures = json.loads(report.read_text())
    assert figures["reused"] == len(kept) and figures["ran"] == len(many["tiles"]) - len(kept)
    assert figures["tasks"] == len(many["tiles"]) and figures["output"] == str(out)
    assert set(gpd.list_layers(out)["name"]) >= {"roads", "instances", "failed"}
    assert gpd.read_file(out, layer="instances")["point_fid"].is_unique


def test_a_batch_killed_outright_leaves_no_worker_behind(many, tmp_path):
    """kill -9 (or the OOM killer) gives the batch no chance to shut its cluster down: its workers end anyway
    (Dask's nanny gives each worker process a pipe from its parent and the worker exits when it closes)."""
    out = tmp_path / "survey.gpkg"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_batch(many["points"], out, many["tiles"][0].parent), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        workers = []
        while proc.poll() is None and not workers:
            time.sleep(0.1)
            workers = _workers_of(proc.pid)
        time.sleep(2)  # the worker has run its setup (the preload) and is taking tasks
        workers = _workers_of(proc.pid)
        assert workers and proc.poll() is None, "the batch ended before it could be killed mid-run"
        proc.kill()
        proc.wait()
        _, alive = psutil.wait_procs(workers, timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    alive = [p for p in alive if p.is_running()]
    for p in alive:
        p.kill()
    assert not alive, [p.cmdline() for p in alive]


def _workers_of(pid: int) -> list:
    """The LocalCluster's worker processes under ``pid`` (none once it has ended)."""
    found = []
    try:
        family = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for p in family:
        try:
            if "spawn_main" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.NoSuchProcess:  # a helper that has just ended
            pass
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_batch_on_a_scheduler_and_a_worker_started_as_separate_processes(tiles, tmp_path):
    address = f"tcp://127.0.0.1:{_free_port()}"
    env_threads = {"OMP_NUM_THREADS": "1"}
    import os

    env = {**os.environ, **env_threads}
    procs = []
    try:
        procs.append(subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                                       address.rsplit(":", 1)[1], "--no-dashboard"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(2)
        procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard",
                                       "--host", "127.0.0.1"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        out = tmp_path / "out.gpkg"
        done = subprocess.run([str(BIN / "pointsam"), "batch", str(tiles["points"]), "-o", str(out), "--rasters",
                               str(tiles["tiles"][0].parent), "--scheduler", address, "-q"], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        inst = gpd.read_file(out, layer="instances")
        assert inst["point_fid"].is_unique and inst["source"].nunique() == 4
    finally:
        for proc in reversed(procs):
            proc.kill()
            proc.wait(timeout=30)
