"""The plugin inside Debian's QGIS: provider registered, ``pointsam:segmentpoints`` from Python and from
``qgis_process``, and an engine killed mid-job."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProcessingException, QgsRasterLayer

from .conftest import feature_count as _count

ROOT = Path(__file__).resolve().parents[2]
FIELDS = {"point_fid", "score", "area_m2", "calibrated", "n_pos", "n_neg", "chip", "model", "source"}


def test_plugin_registers_the_provider_and_its_algorithms(plugin):
    provider = QgsApplication.processingRegistry().providerById("pointsam")
    assert provider is not None and provider.name() == "PointSAM"
    names = {alg.id(): alg.displayName() for alg in provider.algorithms()}
    assert names == {"pointsam:segmentpoints": "Segment points", "pointsam:pointstoboxes": "Points to boxes",
                     "pointsam:segmentrasters": "Segment points over many rasters",
                     "pointsam:finetune": "Fine-tune from points",
                     "pointsam:evaluate": "Evaluate against reference polygons"}


def test_segment_points_gives_one_instance_per_click_in_the_raster_crs(plugin, scene):
    import processing

    raster = QgsRasterLayer(scene["raster"], "scene")
    result = processing.run("pointsam:segmentpoints", {"RASTER": raster, "POINTS": scene["points"],
                                                       "INSTANCES": "TEMPORARY_OUTPUT", "BOXES": "TEMPORARY_OUTPUT",
                                                       "BBOXES": "TEMPORARY_OUTPUT"})
    instances = result["INSTANCES"]
    assert instances.featureCount() == _count(scene["points"])
    assert instances.crs().authid() == raster.crs().authid()
    assert FIELDS <= set(instances.fields().names())
    assert result["BOXES"].featureCount() == instances.featureCount()
    del raster


@pytest.mark.parametrize("algorithm, sinks", [("segmentpoints", ("INSTANCES", "BOXES", "BBOXES")),
                                               ("pointstoboxes", ("BOXES", "BBOXES"))])
def test_qgis_process_runs_the_algorithm_from_the_shell(plugin, scene, tmp_path, algorithm, sinks):
    # Debian 12's qgis_process wrapper passes --noversioncheck, which qgis_process 3.22 refuses: call the binary
    qgis_process = shutil.which("qgis_process.bin") or shutil.which("qgis_process")
    if qgis_process is None:
        pytest.skip("qgis_process is not installed (Debian package qgis)")
    import zipfile

    from qgis_plugin.build import build

    plugins = tmp_path / "plugins"
    zipfile.ZipFile(build(tmp_path)).extractall(plugins)  # as "Install from ZIP" unpacks it
    home = tmp_path / "home"  # a fresh QGIS profile where the plugin is enabled, as after installing it
    ini = home / ".local/share/QGIS/QGIS3/profiles/default/QGIS/QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[PythonPlugins]\npointsam=true\n")
    out = tmp_path / f"{sinks[0].lower()}.gpkg"
    outputs = [f"{sink}={out if sink == sinks[0] else 'TEMPORARY_OUTPUT'}" for sink in sinks]
    env = {**os.environ, "HOME": str(home), "QGIS_PLUGINPATH": str(plugins), "QT_QPA_PLATFORM": "offscreen"}
    run = subprocess.run([qgis_process, "run", f"pointsam:{algorithm}", "--", f"RASTER={scene['raster']}",
                          f"POINTS={scene['points']}", *outputs], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert _count(str(out)) == _count(scene["points"])


def test_engine_killed_mid_job_gives_a_clear_error_and_the_next_run_restarts_it(plugin, scene):
    import processing

    from qgis_plugin import settings

    engine = settings.engine()
    client = engine.client()
    proc = engine._proc
    killer = _kill_when_a_job_runs(client, proc)
    with pytest.raises(QgsProcessingException) as error:
        processing.run("pointsam:segmentpoints", {"RASTER": scene["raster"], "POINTS": scene["points"],
                                                  "INSTANCES": "TEMPORARY_OUTPUT", "BOXES": "TEMPORARY_OUTPUT",
                                                  "BBOXES": "TEMPORARY_OUTPUT"})
    killer.join()
    assert "engine" in str(error.value) and "Traceback" not in str(error.value)
    again = processing.run("pointsam:segmentpoints", {"RASTER": scene["raster"], "POINTS": scene["points"],
                                                      "INSTANCES": "TEMPORARY_OUTPUT", "BOXES": "TEMPORARY_OUTPUT",
                                                      "BBOXES": "TEMPORARY_OUTPUT"})
    assert again["INSTANCES"].featureCount() == _count(scene["points"])
    assert engine._proc is not proc


def _kill_when_a_job_runs(client, proc):
    import threading

    def kill():
        deadline = time.time() + 120
        while time.time() < deadline:
            if any(job["state"] == "running" for job in client.request("GET", "/v1/jobs")["jobs"]):
                break
            time.sleep(0.01)
        proc.kill()

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


def test_a_python_without_the_engine_gives_the_install_command():
    from qgis_plugin.engine import INSTALL_HINT, EngineProcess, engine_python
    from qgis_plugin.errors import EngineMissingError

    with pytest.raises(EngineMissingError) as error:
        EngineProcess("/usr/bin/python3").client()  # QGIS's own Python: no pointsam there
    assert INSTALL_HINT in str(error.value)
    saved = os.environ.pop("POINTSAM_ENGINE_PYTHON", None)
    try:
        with pytest.raises(EngineMissingError, match="/nowhere/bin/python does not exist"):
            engine_python("/nowhere/bin/python")
    finally:
        if saved is not None:
            os.environ["POINTSAM_ENGINE_PYTHON"] = saved
