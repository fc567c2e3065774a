"""The interactive map tool driven with synthetic mouse and key events, against the real engine."""

from __future__ import annotations

import json
import subprocess

from qgis.core import QgsPointXY, QgsProject, QgsRasterLayer, QgsRectangle
from qgis.gui import QgsMapCanvas, QgsMapMouseEvent
from qgis.PyQt.QtCore import QEvent, QPoint, Qt
from qgis.PyQt.QtGui import QKeyEvent

from .conftest import engine_python


def _truth_area_at(scene, x, y) -> float:
    code = ("import json, sys, geopandas as gpd, shapely; t = gpd.read_file(sys.argv[1]); "
            "p = shapely.Point(float(sys.argv[2]), float(sys.argv[3])); "
            "print(json.dumps(float(t[t.contains(p)].area.iloc[0])))")
    out = subprocess.run([engine_python(), "-c", code, scene["truth"], str(x), str(y)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def _click_xy(scene, index):
    code = ("import json, sys, geopandas as gpd; p = gpd.read_file(sys.argv[1]).geometry.iloc[int(sys.argv[2])]; "
            "print(json.dumps([p.x, p.y]))")
    out = subprocess.run([engine_python(), "-c", code, scene["points"], str(index)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def test_clicks_and_enter_put_one_object_in_the_digitized_layer(plugin, scene, model_folder, tmp_path):
    from qgis_plugin import settings
    from qgis_plugin.gui.map_tool import PointSamMapTool
    from qgis_plugin.layers import digitized_layer

    raster = QgsRasterLayer(scene["raster"], "scene")
    QgsProject.instance().addMapLayer(raster)
    canvas = QgsMapCanvas()
    canvas.resize(600, 600)
    canvas.setDestinationCrs(raster.crs())
    canvas.setLayers([raster])
    canvas.setExtent(QgsRectangle(raster.extent()))
    canvas.refresh()
    target = digitized_layer(str(tmp_path / "digitized.gpkg"), raster.crs())
    adapter = {"adapter": str(model_folder / "region.adapter.pt")}  # the dock's choice, as the plugin passes it
    tool = PointSamMapTool(canvas, lambda: raster, lambda: settings.engine().client(), lambda: target, lambda: adapter)
    messages = []
    tool.message.connect(messages.append)
    canvas.setMapTool(tool)

    x, y = _click_xy(scene, 4)
    pixel = canvas.getCoordinateTransform().transform(QgsPointXY(x, y))
    at = QPoint(int(pixel.x()), int(pixel.y()))
    tool.canvasReleaseEvent(QgsMapMouseEvent(canvas, QEvent.Type.MouseButtonRelease, at, Qt.MouseButton.LeftButton))
    assert tool.answer is not None, messages
    assert not tool.band.asGeometry().isEmpty()
    tool.keyPressEvent(QKeyEvent(QEvent.Type.KeyPress, Qt.Key.Key_Return, Qt.KeyboardModifier.NoModifier))

    features = list(target.getFeatures())
    assert len(features) == 1, messages
    geometry = features[0].geometry()
    assert geometry.contains(QgsPointXY(x, y))
    assert abs(geometry.area() - _truth_area_at(scene, x, y)) < 0.5 * _truth_area_at(scene, x, y)
    assert features[0]["n_pos"] == 1 and features[0]["n_neg"] == 0 and features[0]["score"] > 0
    assert "+region@" in features[0]["model"], "the click used the chosen adapter"
    assert tool.points == [] and tool.band.asGeometry().isEmpty()

    tool.canvasReleaseEvent(QgsMapMouseEvent(canvas, QEvent.Type.MouseButtonRelease, at, Qt.MouseButton.LeftButton))
    tool.keyPressEvent(QKeyEvent(QEvent.Type.KeyPress, Qt.Key.Key_Escape, Qt.KeyboardModifier.NoModifier))
    tool.keyPressEvent(QKeyEvent(QEvent.Type.KeyPress, Qt.Key.Key_Return, Qt.KeyboardModifier.NoModifier))
    assert target.featureCount() == 1, "Esc cleared the object, so Enter had nothing to accept"
    canvas.unsetMapTool(tool)
    del tool, canvas
    QgsProject.instance().removeAllMapLayers()
