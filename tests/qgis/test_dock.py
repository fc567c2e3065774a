"""The PointSAM dock: run on a scene as a background task, results added as styled layers above the raster,
and the dock with its results rendered to a PNG (``POINTSAM_SCREENSHOT=path`` keeps a copy, e.g. for docs/)."""

from __future__ import annotations

import os
import shutil
import time

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsRectangle, QgsVectorLayer
from qgis.gui import QgsMapCanvas
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import QHBoxLayout, QWidget


def _wait_for(task, seconds=300):
    deadline = time.time() + seconds
    while time.time() < deadline and task.status() not in (task.Complete, task.Terminated):
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
    dock.show_model()
    assert dock.model.text().startswith("pointsam-tiny@")
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
