"""The PointSAM dock: run on a scene as a background task, results added as styled layers above the raster,
and the dock with its results rendered to a PNG (``POINTSAM_SCREENSHOT=path`` keeps a copy, e.g. for docs/;
that copy is made on X only: run under ``xvfb-run -a``). The engine's lists, downloads and the event loop
while the engine is slow are tested with a fake client (``POINTSAM_MODELS_SCREENSHOT=path`` keeps the
picture of a download in progress); GeoPackages holding the user's own layers with the real engine."""

from __future__ import annotations

import os
import threading
import time

from qgis.core import (
    QgsApplication,
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.gui import QgsMapCanvas
from qgis.PyQt import sip
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import QHBoxLayout, QWidget

from .conftest import feature_count as _count
from .conftest import grab_widget, keep_screenshot


def _run(dock):
    """Press Run and wait for the run to end; the finished task."""
    dock.run()
    task = dock.task
    if task is not None:
        _wait_for(task)
    return task


def _load_models(dock):
    dock.load_models()
    _wait_for(dock.listing)


def _wait_for(task, seconds=300):
    """Process events until a background call has finished and its ``done`` has run."""
    from qgis_plugin import background

    deadline = time.time() + seconds
    while time.time() < deadline and task in background._running:
        QgsApplication.processEvents()
        time.sleep(0.02)
    for _ in range(20):  # whatever done() queued
        QgsApplication.processEvents()


def test_dock_runs_the_engine_and_adds_grouped_styled_layers(plugin, scene, tmp_path):
    from qgis_plugin import settings
    from qgis_plugin.gui.dock import PointSamDock

    project = QgsProject.instance()
    raster = QgsRasterLayer(scene["raster"], "buildings scene")
    points = QgsVectorLayer(scene["points"], "clicks", "ogr")
    project.addMapLayers([raster, points])
    dock = PointSamDock(lambda: settings.engine().client())
    dock.raster.setLayer(raster)
    dock.points.setLayer(points)
    _load_models(dock)
    assert dock.model.currentText().startswith("engine default: pointsam-tiny@")
    task = _run(dock)
    assert task.value is not None, dock.log.toPlainText()
    boxes, instances = dock.added[:2]
    assert instances.featureCount() == points.featureCount()
    assert boxes.featureCount() == points.featureCount()
    group = project.layerTreeRoot().findLayer(instances.id()).parent()
    assert group.name() == "PointSAM: buildings scene"
    siblings = group.parent().children()
    assert siblings.index(group) < siblings.index(project.layerTreeRoot().findLayer(raster.id()))
    assert "instances" in dock.log.toPlainText()

    image = _screenshot(dock, [instances, boxes, points, raster], raster.extent(), tmp_path / "dock.png")
    yellow = QColor(255, 200, 0)
    assert any(image.pixelColor(x, y) == yellow for x in range(0, 700, 2) for y in range(0, 700, 2)), \
        "the polygons' outlines are drawn over the raster"
    keep_screenshot(tmp_path / "dock.png", "POINTSAM_SCREENSHOT")
    project.removeAllMapLayers()


def _screenshot(dock, layers, extent, path):
    window = QWidget()
    canvas = QgsMapCanvas()
    canvas.setDestinationCrs(layers[-1].crs())
    canvas.setLayers(layers)
    canvas.setExtent(QgsRectangle(extent))
    row = QHBoxLayout()
    row.addWidget(canvas, 3)
    row.addWidget(dock, 2)
    window.setLayout(row)
    window.resize(1200, 720)
    window.show()
    canvas.refresh()
    deadline = time.time() + 30
    while time.time() < deadline and (canvas.isDrawing() or not canvas.mapSettings().hasValidSettings()):
        QgsApplication.processEvents()
        time.sleep(0.05)
    canvas.waitWhileRendering()
    QgsApplication.processEvents()
    pixmap = window.grab()
    pixmap.save(str(path))
    image = pixmap.toImage()
    window.hide()
    return image


def test_dock_errors_reach_the_message_bar_as_one_line(plugin, scene):
    from qgis_plugin import settings
    from qgis_plugin.gui.dock import PointSamDock

    shown = []
    points = QgsVectorLayer(scene["points"], "clicks", "ogr")
    raster = QgsRasterLayer(scene["raster"], "scene")
    QgsProject.instance().addMapLayers([raster, points])
    dock = PointSamDock(lambda: settings.engine().client(), notify=shown.append)
    dock.raster.setLayer(raster)
    dock.points.setLayer(points)
    dock.selected_only.setChecked(True)  # nothing is selected
    dock.run()
    assert len(shown) == 1 and "nothing is selected in clicks" in shown[0] and "\n" not in shown[0]
    assert dock.task is None
    dock.selected_only.setChecked(False)
    dock.bands.setText("a,b")
    dock.run()
    assert len(shown) == 2 and shown[1].startswith("Bands: give band numbers separated by commas, e.g. 3,2,1")
    assert dock.task is None
    dock.bands.setText("9")  # the engine refuses it: the scene has three bands
    _run(dock)
    assert len(shown) == 3 and "band 9 does not exist" in shown[2] and "Traceback" not in shown[2]
    dock.bands.setText("")
    far = QgsVectorLayer(f"Point?crs={raster.crs().authid()}", "far clicks", "memory")
    far.dataProvider().addFeatures([QgsFeature(far.fields())])
    far.dataProvider().changeGeometryValues({1: QgsGeometry.fromPointXY(QgsPointXY(raster.extent().xMaximum() + 1e4,
                                                                                   raster.extent().yMaximum()))})
    QgsProject.instance().addMapLayer(far)
    dock.points.setLayer(far)
    _run(dock)  # the engine names the copy of the layer it was given; the dock names the layer
    assert len(shown) == 4 and shown[3].startswith("no point of 'far clicks' lies inside"), shown[3]
    QgsProject.instance().removeAllMapLayers()


def test_dock_offers_the_engines_models_and_their_adapters_and_runs_the_choice(plugin, scene, model_folder,
                                                                               monkeypatch):
    from qgis_plugin import settings
    from qgis_plugin.gui.dock import PointSamDock

    monkeypatch.setenv("POINTSAM_MODELS", str(model_folder))
    settings.stop_engine()  # the next engine starts with the model folder
    project = QgsProject.instance()
    raster, points = QgsRasterLayer(scene["raster"], "scene"), QgsVectorLayer(scene["points"], "clicks", "ogr")
    project.addMapLayers([raster, points])
    try:
        dock = PointSamDock(lambda: settings.engine().client())
        dock.raster.setLayer(raster)
        dock.points.setLayer(points)
        _load_models(dock)
        models = [(dock.model.itemData(i) or {}).get("name") for i in range(dock.model.count())]
        assert dock.model.itemText(0).startswith("engine default: pointsam-tiny@")
        assert {"pointsam-tiny", "vit_b"} <= set(models)
        assert _items(dock.adapter) == ["(none)", "region"], "only adapters trained for the chosen model"
        dock.model.setCurrentIndex(models.index("vit_b"))
        assert _items(dock.adapter) == ["(none)", "tinyregion"]
        task = _run(dock)
        assert task.value is not None, dock.log.toPlainText()
        assert task.value["report"]["model"].startswith("tiny-test@"), "the run used the chosen model"

        dock.model.setCurrentIndex(0)
        dock.adapter.setCurrentIndex(_items(dock.adapter).index("region"))
        task = _run(dock)
        assert task.value is not None, dock.log.toPlainText()
        instances = dock.added[1]
        assert instances.featureCount() == points.featureCount()
        (label,) = {feature["model"] for feature in instances.getFeatures()}
        assert label.startswith("pointsam-tiny@") and "+region@" in label, "every feature names the chosen adapter"
    finally:
        project.removeAllMapLayers()
        settings.stop_engine()  # later tests get an engine without the folder


def _items(combo) -> list:
    return [combo.itemText(i) for i in range(combo.count())]


# -- the engine's lists and downloads, with a fake engine ------------------------------------------------------

MB = 1_000_000
TINY_SHA = "92387606" + "0" * 56
CATALOG = [{"name": "vit_b", "file": "sam_vit_b_01ec64.pth", "url": "http://loopback/vit_b", "size": 375 * MB,
            "sha256": "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", "installed": True,
            "path": "/models/sam_vit_b_01ec64.pth", "sha256_state": "verified"},
           {"name": "vit_l", "file": "sam_vit_l_0b3195.pth", "url": "http://loopback/vit_l", "size": 1250 * MB,
            "sha256": "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", "installed": False,
            "path": None, "sha256_state": "not installed"}]


class FakeEngine:
    """The engine's model routes and a pull job, answered in memory. ``release`` lets a pending model list
    return, so a test decides how long the engine takes; with ``polls_allowed`` (a semaphore) each poll of the
    download waits for a permit; ``steps`` is how many polls the download takes."""

    def __init__(self, steps: int = 3):
        import threading

        self.release = threading.Event()
        self.release.set()
        self.polls_allowed = None
        self.calls, self.polls, self.steps, self.cancelled = [], 0, steps, False
        self.catalog = [dict(entry) for entry in CATALOG]

    def models(self) -> dict:
        self.calls.append("models")
        self.release.wait(60)
        pulled = [{"name": e["name"], "path": e["path"], "sha256": e["sha256"]} for e in self.catalog if e["installed"]]
        return {"loaded": {"label": "pointsam-tiny@92387606", "sha256": TINY_SHA},
                "available": [{"name": "pointsam-tiny", "path": "/pkg/pointsam-tiny.pt", "sha256": TINY_SHA}] + pulled,
                "adapters": [], "catalog": self.catalog, "model_dir": "/models"}

    def pull(self, name: str) -> dict:
        self.calls.append(f"pull {name}")
        return {"id": "job1", "state": "running", "progress": 0.0, "stage": "connecting"}

    def job(self, job_id: str) -> dict:
        if self.polls_allowed is not None:
            self.polls_allowed.acquire(timeout=60)
        self.polls += 1
        if self.polls >= self.steps:
            entry = next(e for e in self.catalog if e["name"] == "vit_l")
            entry.update(installed=True, path="/models/sam_vit_l_0b3195.pth", sha256_state="verified")
            return {"id": job_id, "state": "succeeded", "progress": 1.0, "stage": "done",
                    "result": {"name": "vit_l", "path": entry["path"], "sha256": entry["sha256"]}}
        done = 1250 * self.polls // self.steps
        return {"id": job_id, "state": "running", "progress": self.polls / self.steps,
                "stage": f"downloading vit_l: {done}/1250 MB"}

    def cancel(self, job_id: str) -> dict:
        self.cancelled = True
        return {"id": job_id, "state": "cancelled", "progress": 0.0, "stage": "cancelled", "message": "cancelled"}

    def follow(self, job, progress, is_cancelled, poll=0.0):
        from qgis_plugin.client import EngineClient

        return EngineClient.follow(self, job, progress, is_cancelled, poll=0.01)


def _names(dock) -> list:
    return [(dock.model.itemData(i) or {}).get("name") for i in range(dock.model.count())]


def test_refresh_waits_for_a_slow_engine_off_the_gui_thread_and_lists_installed_and_downloadable_models(qgis_app):
    from qgis.PyQt.QtCore import QTimer

    from qgis_plugin import catalog
    from qgis_plugin.gui.dock import PointSamDock

    engine = FakeEngine()
    engine.release.clear()  # the engine is starting: /v1/models does not answer yet
    dock = PointSamDock(lambda: engine, engine_starting=lambda: True)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(10)
    try:
        dock.load_models()
        assert dock.state.text() == "starting engine…"
        deadline = time.time() + 60
        while len(ticks) < 20 and time.time() < deadline:  # the event loop runs while the call is pending
            QgsApplication.processEvents()
            time.sleep(0.005)
        assert len(ticks) >= 20 and dock.listing is not None and not dock.refresh_button.isEnabled()
        engine.release.set()
        _wait_for(dock.listing)
    finally:
        timer.stop()
    assert dock.listing is None and dock.refresh_button.isEnabled() and dock.state.text() == ""
    assert _names(dock) == [None, "pointsam-tiny", "vit_b", "vit_l"]
    assert [dock.model.itemText(i) for i in (2, 3)] == ["vit_b (375 MB, installed, sha256 verified)",
                                                              "vit_l (1.25 GB): download"]
    dock.model.setCurrentIndex(2)
    assert not dock.download_button.isEnabled() and dock.choice() == {"model": "/models/sam_vit_b_01ec64.pth"}
    dock.model.setCurrentIndex(3)
    assert dock.download_button.isEnabled(), "a model not downloaded yet offers Download"
    assert catalog.installed_model_names() == ["pointsam-tiny", "vit_b"], "the answer is kept for Processing"
    catalog.forget()


def test_download_follows_the_pull_job_with_its_stage_and_lists_the_model_as_installed(qgis_app, tmp_path):
    from qgis_plugin import catalog
    from qgis_plugin.gui.dock import PointSamDock

    engine = FakeEngine(steps=3)
    dock = PointSamDock(lambda: engine, engine_starting=lambda: False)
    _load_models(dock)
    dock.model.setCurrentIndex(_names(dock).index("vit_l"))
    engine.polls_allowed = threading.Semaphore(0)
    dock.download()
    assert dock.state.text() == "waiting for the engine"
    engine.polls_allowed.release()  # the engine answers one poll: a third of the file is in
    deadline = time.time() + 60
    while not dock.state.text().startswith("downloading vit_l") and time.time() < deadline:
        QgsApplication.processEvents()
        time.sleep(0.01)
    assert dock.state.text() == "downloading vit_l: 416/1250 MB" and dock.progress.value() == 33
    assert engine.calls[-1] == "pull vit_l"
    assert dock.cancel_button.isEnabled() and not dock.run_button.isEnabled()
    _screenshot_models(dock, tmp_path / "models.png")
    engine.polls_allowed.release(2)
    _wait_for(dock.task)
    _wait_for(dock.listing)
    assert "vit_l downloaded, sha256 verified: /models/sam_vit_l_0b3195.pth" in dock.log.toPlainText()
    assert dock.model_name() == "vit_l" and dock.model.currentText() == "vit_l (1.25 GB, installed, sha256 verified)"
    assert not dock.download_button.isEnabled() and dock.run_button.isEnabled()
    assert "vit_l" in catalog.installed_model_names()
    catalog.forget()


def test_a_cancelled_download_cancels_the_engine_job_and_says_so(qgis_app):
    from qgis_plugin import catalog
    from qgis_plugin.gui.dock import PointSamDock

    shown = []
    engine = FakeEngine(steps=1000)
    dock = PointSamDock(lambda: engine, notify=shown.append, engine_starting=lambda: False)
    _load_models(dock)
    dock.model.setCurrentIndex(_names(dock).index("vit_l"))
    dock.download()
    task = dock.task
    while engine.polls < 2:
        QgsApplication.processEvents()
        time.sleep(0.01)
    dock.cancel()
    _wait_for(task)
    assert engine.cancelled and shown and "cancelled" in shown[-1]
    assert dock.download_button.isEnabled(), "the model can be downloaded again"
    catalog.forget()


def _screenshot_models(dock, path):
    """The dock alone, as the README shows it mid-download (``POINTSAM_MODELS_SCREENSHOT`` keeps a copy)."""
    dock.resize(460, 640)
    grab_widget(dock, path)
    keep_screenshot(path, "POINTSAM_MODELS_SCREENSHOT")


def test_an_adapter_fine_tuning_wrote_anywhere_joins_the_list_and_step_0_is_said_plainly(qgis_app, tmp_path):
    from qgis_plugin import catalog
    from qgis_plugin.gui.dock import PointSamDock

    shown = []
    engine = FakeEngine()
    dock = PointSamDock(lambda: engine, notify=shown.append, engine_starting=lambda: False)
    _load_models(dock)
    adapter = tmp_path / "elsewhere" / "harbour.adapter.pt"
    adapter.parent.mkdir()
    adapter.write_bytes(b"stand-in")
    header = {"name": "harbour", "path": str(adapter), "base": {"name": "pointsam-tiny", "sha256": TINY_SHA}}
    catalog.remember_adapter(header, 40)
    QgsApplication.processEvents()
    assert _items(dock.adapter) == ["(none)", "harbour"] and not shown
    catalog.remember_adapter({**header, "name": "harbour2"}, 0)
    QgsApplication.processEvents()
    assert len(shown) == 1 and "kept step 0" in shown[0] and "changes nothing" in shown[0]
    dock.model.setCurrentIndex(_names(dock).index("vit_b"))
    assert _items(dock.adapter) == ["(none)"], "an adapter of another base is not offered"
    catalog.forget()


class _SetUpEngine:
    """What "Set up engine…" starts, as settings.adopt_engine sees it: its client is the fake engine."""

    def __init__(self, python: str, args, engine: FakeEngine):
        self.python, self.args, self.engine, self.stopped = python, tuple(args), engine, False

    def client(self):
        return self.engine

    def stop(self):
        self.stopped = True


def test_the_model_list_follows_the_engine_set_up_engine_started_in_the_background(qgis_app, monkeypatch):
    from qgis_plugin import catalog, installer, settings
    from qgis_plugin.gui.dock import PointSamDock
    from qgis_plugin.plugin import PointSamPlugin
    from qgis_plugin.settings import ENV_PYTHON

    from .conftest import _StubIface

    engine, python = FakeEngine(), "/usr/bin/python3"
    engine.release.clear()  # the new engine is slow to list its models
    monkeypatch.setenv(ENV_PYTHON, python)  # the settings name the set-up engine, so the plugin adopts it
    monkeypatch.setattr(installer, "setup", lambda python, target, wheel, engine_args, **kw: installer.SetupResult(
        python, _SetUpEngine(python, engine_args, engine), {"version": "0.1.0", "device": "cpu"}))
    saved = settings.configured_python()
    catalog.forget()  # no model list kept from earlier tests: the dock starts as after a fresh install
    plugin = PointSamPlugin(_StubIface())
    plugin.dock = PointSamDock(plugin._client, engine_starting=lambda: False)
    try:
        plugin.show_setup()
        dialog = plugin.setup_dialog
        _wait_for(dialog.finding)
        assert _names(plugin.dock) == [None] and "Refresh" in plugin.dock.model.currentText()
        dialog.python.setEditText(python)
        dialog.install()
        deadline = time.time() + 60
        while dialog.task is not None and time.time() < deadline:
            QgsApplication.processEvents()
            time.sleep(0.01)
        assert dialog.task is None and "done" in dialog.stage.text(), dialog.log.toPlainText()
        assert plugin.dock.listing is not None, "the setup's end started a model list, and the GUI did not wait for it"
        engine.release.set()
        _wait_for(plugin.dock.listing)
        assert engine.calls == ["models"]
        assert plugin.dock.model.currentText() == "engine default: pointsam-tiny@92387606"
        assert _names(plugin.dock) == [None, "pointsam-tiny", "vit_b", "vit_l"]
    finally:
        engine.release.set()
        plugin.unload()
        settings.set_value(settings.KEY_PYTHON, saved)
        catalog.forget()


def test_set_up_engine_stops_the_engine_it_replaces_off_the_gui_thread_and_holds_no_lock_meanwhile(qgis_app,
                                                                                                 monkeypatch):
    """Stopping the running engine takes a second or more (it is asked to exit, then waited for): desktop QGIS froze
    for 1.4-1.8 s at the end of a setup while it did so on the GUI thread, and a click or mouse move (which asks
    whether the engine must start, under the settings' lock) must not wait for it either."""
    from qgis_plugin import background, installer, settings
    from qgis_plugin.gui.setup_dialog import SetupDialog
    from qgis_plugin.settings import ENV_PYTHON

    python, stopped_on_gui_thread, stopping, release = "/usr/bin/python3", [], threading.Event(), threading.Event()
    old = _SetUpEngine("/old/python", (), FakeEngine())

    def slow_stop():
        stopped_on_gui_thread.append(threading.current_thread() is threading.main_thread())
        stopping.set()
        release.wait(30)

    old.stop = slow_stop
    monkeypatch.setattr(settings, "_engine", old)
    monkeypatch.setattr(settings, "_choice", ("process", "/old/python"))
    monkeypatch.setenv(ENV_PYTHON, python)
    monkeypatch.setattr(installer, "setup", lambda python, target, wheel, engine_args, **kw: installer.SetupResult(
        python, _SetUpEngine(python, engine_args, FakeEngine()), {"version": "0.1.0", "device": "cpu"}))
    saved = settings.configured_python()
    dialog = SetupDialog()
    try:
        _wait_for(dialog.finding)
        dialog.python.setEditText(python)
        dialog.install()
        deadline = time.time() + 60
        while not stopping.is_set() and time.time() < deadline:
            QgsApplication.processEvents()
            time.sleep(0.01)
        assert stopped_on_gui_thread == [False], "the replaced engine is stopped on a worker thread"
        assert "done" in dialog.stage.text() and settings._engine.python == python  # adopted before the stop ends
        assert settings._lock.acquire(timeout=5), "the stop holds no lock the GUI thread takes"
        settings._lock.release()
        release.set()
        background.cancel_all()  # as the plugin's unload does: it waits for the stop rather than cancelling it
        assert background.pending() == 0
    finally:
        release.set()
        settings.stop_engine()
        settings.set_value(settings.KEY_PYTHON, saved)
        sip.delete(dialog)


def test_a_long_setup_line_does_not_widen_the_setup_dialog(qgis_app):
    from qgis_plugin.gui.setup_dialog import SetupDialog

    dialog = SetupDialog()
    try:
        _wait_for(dialog.finding)
        width = dialog.width()
        dialog.stage.setText("downloading nvidia_cusparselt_cu13-0.8.1-py3-none-manylinux2014_x86_64.whl: "
                             "0 of 236 MB " * 4)
        assert dialog.layout().minimumSize().width() <= width
    finally:
        sip.delete(dialog)


# -- the user's GeoPackage, with the real engine --------------------------------------------------------------

def _foreign_geopackage(path, with_instances: bool = False):
    """A GeoPackage holding the user's own layer ``roads`` with a saved style (and, optionally, a layer called
    ``instances``, as an earlier run leaves)."""
    from qgis.core import QgsFeature, QgsGeometry, QgsPointXY, QgsVectorFileWriter

    roads = QgsVectorLayer("LineString?crs=EPSG:32633&field=name:string", "roads", "memory")
    features = []
    for i in range(3):
        feature = QgsFeature(roads.fields())
        feature.setGeometry(QgsGeometry.fromPolylineXY([QgsPointXY(i, 0), QgsPointXY(i, 10)]))
        feature["name"] = f"road {i}"
        features.append(feature)
    roads.dataProvider().addFeatures(features)
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName, options.layerName = "GPKG", "roads"
    QgsVectorFileWriter.writeAsVectorFormatV3(roads, str(path), QgsProject.instance().transformContext(), options)
    if with_instances:
        options.layerName = "instances"
        options.actionOnExistingFile = QgsVectorFileWriter.ActionOnExistingFile.CreateOrOverwriteLayer
        QgsVectorFileWriter.writeAsVectorFormatV3(roads, str(path), QgsProject.instance().transformContext(), options)
    saved = QgsVectorLayer(f"{path}|layername=roads", "roads", "ogr")
    saved.saveStyleToDatabase("roads style", "the user's style", True, "")
    del saved


def _rows(path, layer="roads"):
    from qgis.core import QgsVectorLayer as Layer

    opened = Layer(f"{path}|layername={layer}", layer, "ogr")
    rows = sorted((f.id(), f.attributes(), f.geometry().asWkt()) for f in opened.getFeatures())
    del opened
    return rows


def _styles(path):
    """The rows of the GeoPackage's ``layer_styles`` table (the styles saved in it)."""
    return [row[1] for row in _rows(path, "layer_styles")]


def _dock_on_scene(scene, output, answer):
    from qgis_plugin import settings
    from qgis_plugin.gui.dock import PointSamDock

    asked = []
    raster, points = QgsRasterLayer(scene["raster"], "scene"), QgsVectorLayer(scene["points"], "clicks", "ogr")
    QgsProject.instance().addMapLayers([raster, points])
    dock = PointSamDock(lambda: settings.engine().client(), confirm=lambda question: asked.append(question) or answer)
    dock.raster.setLayer(raster)
    dock.points.setLayer(points)
    dock.output.setFilePath(str(output))
    return dock, asked


def _assert_run_keeps_the_users_layers(dock, output, before, styles, scene) -> None:
    """A run into ``output`` succeeds, leaves its other layers' rows and styles as they were, and writes one
    instance per click."""
    task = _run(dock)
    assert task.value is not None, dock.log.toPlainText()
    assert _rows(output) == before and _styles(output) == styles
    assert len(_rows(output, "instances")) == _count(scene["points"])


def test_a_run_into_the_users_geopackage_keeps_its_other_layers_and_styles(plugin, scene, tmp_path):
    output = tmp_path / "mine.gpkg"
    _foreign_geopackage(output)
    before, styles = _rows(output), _styles(output)
    assert before and styles
    dock, asked = _dock_on_scene(scene, output, answer=False)
    try:
        _assert_run_keeps_the_users_layers(dock, output, before, styles, scene)
        assert not asked, "nothing of the user's is replaced: no question"
    finally:
        QgsProject.instance().removeAllMapLayers()


def test_layers_of_an_earlier_run_are_replaced_only_when_the_user_says_yes(plugin, scene, tmp_path):
    output = tmp_path / "earlier.gpkg"
    _foreign_geopackage(output, with_instances=True)
    before, styles, earlier = _rows(output), _styles(output), _rows(output, "instances")
    QgsProject.instance().layerTreeRoot().removeAllChildren()  # groups earlier tests left
    dock, asked = _dock_on_scene(scene, output, answer=False)
    try:
        assert _run(dock) is None, "no: nothing runs"
        assert len(asked) == 1 and "instances" in asked[0] and "roads" not in asked[0]
        assert _rows(output, "instances") == earlier and _rows(output) == before, "no: the file is as it was"
        assert "not run" in dock.log.toPlainText()
        dock.confirm = lambda question: True
        _assert_run_keeps_the_users_layers(dock, output, before, styles, scene)  # yes: earlier instances replaced
        second = _run(dock)
        assert second.value is not None
        groups = [g.name() for g in QgsProject.instance().layerTreeRoot().findGroups(True) if g.findLayers()]
        assert "PointSAM: scene" in groups and "PointSAM: scene (2)" in groups, "a second run gets its own group"
    finally:
        QgsProject.instance().removeAllMapLayers()


def test_a_cancelled_run_leaves_the_users_geopackage_as_it_was(plugin, scene, tmp_path):
    output = tmp_path / "cancelled.gpkg"
    _foreign_geopackage(output, with_instances=True)
    before, styles, earlier = _rows(output), _styles(output), _rows(output, "instances")
    dock, _ = _dock_on_scene(scene, output, answer=True)
    try:
        dock.run()
        task = dock.task
        task.cancel()
        _wait_for(task)
        assert task.error and "cancelled" in task.error
        assert _rows(output) == before and _styles(output) == styles and _rows(output, "instances") == earlier
        assert not dock.added
    finally:
        QgsProject.instance().removeAllMapLayers()


def test_temporary_outputs_are_removed_when_the_project_is_closed(plugin, scene):
    dock, _ = _dock_on_scene(scene, "", answer=True)
    assert not QgsProject.instance().absolutePath(), "an unsaved project"
    task = _run(dock)
    assert task.value is not None, dock.log.toPlainText()
    output = task.value["output"]
    assert os.path.isfile(output) and dock.added
    assert dock.temporary_output("scene") != output, "the next run gets a file of its own"
    dock.drop_temporary_outputs()
    assert os.path.isfile(output), "its layers are still in the project"
    dock.added = []
    QgsProject.instance().clear()
    assert not os.path.exists(os.path.dirname(output))


def test_skipped_clicks_are_added_as_a_layer_and_counted_per_reason_in_the_log(plugin, scene, tmp_path):
    from qgis.core import QgsFeature, QgsFeatureRequest, QgsGeometry, QgsPointXY

    raster = QgsRasterLayer(scene["raster"], "scene")
    clicks = QgsVectorLayer(scene["points"], "clicks", "ogr").materialize(QgsFeatureRequest())
    outside = QgsFeature(clicks.fields())
    outside.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(raster.extent().xMaximum() + 500, raster.extent().yMaximum())))
    assert clicks.dataProvider().addFeatures([outside])
    dock, _ = _dock_on_scene(scene, tmp_path / "skips.gpkg", answer=True)
    dock.points.setLayer(None)
    QgsProject.instance().addMapLayers([clicks])
    dock.points.setLayer(clicks)
    try:
        task = _run(dock)
        assert task.value is not None, dock.log.toPlainText()
        names = [layer.name() for layer in dock.added]
        assert names == ["boxes", "instances", "skipped"] and dock.added[2].featureCount() == 1
        assert "1 click skipped: 1 outside raster" in dock.log.toPlainText()
    finally:
        QgsProject.instance().removeAllMapLayers()
        del raster


def test_the_regularize_choice_is_remembered_and_reaches_the_engine(plugin, scene, tmp_path):
    from qgis_plugin import settings
    from qgis_plugin.gui.dock import KEY_REGULARIZE, PointSamDock

    before = settings.value(KEY_REGULARIZE)
    dock, _ = _dock_on_scene(scene, tmp_path / "outlines.gpkg", answer=True)
    try:
        dock.regularize.setCurrentIndex(dock.regularize.findData("buildings"))
        again = PointSamDock(lambda: settings.engine().client())
        assert again.regularize.currentData() == "buildings"  # a new dock (a new QGIS session) starts from it
        task = _run(dock)
        assert task.value is not None, dock.log.toPlainText()
        instances = next(layer for layer in dock.added if layer.name() == "instances")
        values = [f["regularized"] for f in instances.getFeatures()]
        assert values and all(values)
        assert all(0 < f["iou_to_mask"] <= 1 for f in instances.getFeatures())
    finally:
        QgsProject.instance().removeAllMapLayers()
        settings.set_value(KEY_REGULARIZE, before)
