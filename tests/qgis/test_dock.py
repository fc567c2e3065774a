"""The PointSAM dock: run on a scene as a background task, results added as styled layers above the raster,
and the dock with its results rendered to a PNG (``POINTSAM_SCREENSHOT=path`` keeps a copy, e.g. for docs/;
that copy is made on X only: run under ``xvfb-run -a``)."""

from __future__ import annotations

import os
import shutil
import time

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsRectangle, QgsTask, QgsVectorLayer
from qgis.gui import QgsMapCanvas
from qgis.PyQt.QtGui import QColor, QGuiApplication
from qgis.PyQt.QtWidgets import QHBoxLayout, QWidget


def _wait_for(task, seconds=300):
    deadline = time.time() + seconds
    while time.time() < deadline and task.status() not in (QgsTask.TaskStatus.Complete, QgsTask.TaskStatus.Terminated):
        QgsApplication.processEvents()
        time.sleep(0.02)
    for _ in range(50):  # let finished() run on the main thread
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
    dock.load_models()
    assert dock.model.currentText().startswith("engine default: pointsam-tiny@")
    dock.run()
    _wait_for(dock.task)
    assert dock.task.result is not None, dock.log.toPlainText()
    boxes, instances = dock.added
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
    if os.environ.get("POINTSAM_SCREENSHOT"):
        assert QGuiApplication.platformName() == "xcb", "render the docs screenshot on X: run under xvfb-run -a"
        shutil.copy(tmp_path / "dock.png", os.environ["POINTSAM_SCREENSHOT"])
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
    dock.bands.setText("9")  # the engine refuses it: the scene has three bands
    dock.run()
    _wait_for(dock.task)
    assert len(shown) == 2 and "band 9 does not exist" in shown[1] and "Traceback" not in shown[1]
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
        dock.load_models()
        models = [dock.model.itemText(i) for i in range(dock.model.count())]
        assert models[0].startswith("engine default: pointsam-tiny@") and {"pointsam-tiny", "vit_b"} <= set(models)
        assert _items(dock.adapter) == ["(none)", "region"], "only adapters trained for the chosen model"
        dock.model.setCurrentIndex(models.index("vit_b"))
        assert _items(dock.adapter) == ["(none)", "tinyregion"]
        dock.run()
        _wait_for(dock.task)
        assert dock.task.result is not None, dock.log.toPlainText()
        assert dock.task.result["report"]["model"].startswith("tiny-test@"), "the run used the chosen model"

        dock.model.setCurrentIndex(0)
        dock.adapter.setCurrentIndex(_items(dock.adapter).index("region"))
        dock.run()
        _wait_for(dock.task)
        assert dock.task.result is not None, dock.log.toPlainText()
        instances = dock.added[1]
        assert instances.featureCount() == points.featureCount()
        (label,) = {feature["model"] for feature in instances.getFeatures()}
        assert label.startswith("pointsam-tiny@") and "+region@" in label, "every feature names the chosen adapter"
    finally:
        project.removeAllMapLayers()
        settings.stop_engine()  # later tests get an engine without the folder


def _items(combo) -> list:
    return [combo.itemText(i) for i in range(combo.count())]
