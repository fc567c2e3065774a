"""The toolbar widget beside "digitize by clicking": which polygon layer accepted objects go into."""

from __future__ import annotations

from typing import Callable

from qgis.core import QgsMapLayerProxyModel, QgsVectorLayer
from qgis.gui import QgsMapLayerComboBox
from qgis.PyQt.QtWidgets import QHBoxLayout, QLabel, QWidget

NEW_LAYER = "PointSAM digitized (new GeoPackage)"


class DigitizeBar(QWidget):
    """"into: [layer]": any polygon layer of the project, or (the default) the "PointSAM digitized" GeoPackage
    layer that ``default_layer()`` finds or creates."""

    def __init__(self, default_layer: Callable[[], QgsVectorLayer], parent=None):
        super().__init__(parent)
        self.default_layer = default_layer
        self.layer = QgsMapLayerComboBox()
        self.layer.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        self.layer.setAllowEmptyLayer(True, NEW_LAYER)
        self.layer.setLayer(None)
        self.layer.setMinimumContentsLength(18)
        self.layer.setToolTip("Polygon layer the digitized objects are added to (its edit buffer: Ctrl+Z undoes, "
                              "Save Layer Edits writes them). Fields it lacks are skipped.")
        row = QHBoxLayout(self)
        row.setContentsMargins(4, 0, 4, 0)
        row.addWidget(QLabel("into"))
        row.addWidget(self.layer)

    def target(self) -> QgsVectorLayer:
        """The chosen layer; the default layer (created on first use) when none is chosen."""
        chosen = self.layer.currentLayer()
        if chosen is not None:
            return chosen
        layer = self.default_layer()
        self.layer.setLayer(layer)  # from now on it is shown by name, like any other choice
        return layer
