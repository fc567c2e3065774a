"""Qt6 / QGIS 4 safety of the plugin's sources: the Qt5-only names it once used do not come back, and every
scoped enum name it uses instead exists in this QGIS (3.22, PyQt5)."""

from __future__ import annotations

import re
from pathlib import Path

import qgis.core
import qgis.gui
from qgis.PyQt import QtCore

PLUGIN = Path(__file__).resolve().parents[2] / "qgis_plugin"

# Qt5-only spellings removed from the plugin: PyQt6 has no QVariant types, no unscoped enum members, no exec_()
REMOVED = ["exec_(", "QVariant.Double", "QVariant.Int", "QVariant.String", "Qt.RightDockWidgetArea",
           "Qt.RightButton", "Qt.ShiftModifier", "Qt.Key_Return", "Qt.Key_Enter", "Qt.Key_Space", "Qt.Key_Backspace",
           "Qt.Key_Escape", "QgsTask.CanCancel", "QgsMapLayerProxyModel.RasterLayer", "QgsMapLayerProxyModel.PointLayer",
           "QgsFileWidget.SaveFile", "QgsWkbTypes.MultiPolygon", "QgsWkbTypes.PolygonGeometry",
           "QgsVectorFileWriter.NoError", "QgsProcessing.TypeVectorPoint", "QgsProcessing.TypeVectorPolygon",
           "QgsProcessingParameterNumber.Double", "QgsFeatureSink.FastInsert", "toMapCoordinates(event.pos())"]
UNSCOPED_QT = re.compile(r"\b(?:Qt|QEvent)\.[A-Za-z_]\w*\b(?!\.)")  # Qt.RightButton, not Qt.MouseButton.RightButton
QT5_QACTION = re.compile(r"QtWidgets import[^\n]*\bQAction\b")  # Qt6 moved QAction to QtGui
SCOPED = re.compile(r"\b((?:Qt|QEvent|Qgs\w+)\.[A-Z]\w*\.[A-Za-z_]\w*)\b")


def _sources() -> dict:
    return {path.relative_to(PLUGIN).as_posix(): path.read_text() for path in sorted(PLUGIN.rglob("*.py"))}


def test_the_plugin_uses_no_qt5_only_names():
    found = [(name, text) for name, source in _sources().items() for text in REMOVED if text in source]
    found += [(name, match) for name, source in _sources().items() for match in UNSCOPED_QT.findall(source)]
    found += [(name, "QAction from QtWidgets") for name, source in _sources().items()
              if name != "compat.py" and QT5_QACTION.search(source)]
    assert not found, f"Qt5-only names (use scoped enums, qgis_plugin.compat): {found}"


def test_every_scoped_enum_name_the_plugin_uses_exists_in_this_qgis():
    used = sorted({match for source in _sources().values() for match in SCOPED.findall(source)})
    assert "Qt.MouseButton.RightButton" in used and "QgsTask.Flag.CanCancel" in used  # the scan sees them
    missing = []
    for dotted in used:
        root, *rest = dotted.split(".")
        value = next((getattr(m, root) for m in (QtCore, qgis.core, qgis.gui) if hasattr(m, root)), None)
        for part in rest:
            value = getattr(value, part, None)
        if value is None:
            missing.append(dotted)
    assert not missing, f"not in QGIS {qgis.core.Qgis.QGIS_VERSION}: {missing}"
