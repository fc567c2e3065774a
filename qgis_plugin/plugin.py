"""The plugin object QGIS loads: the Processing provider, the PointSAM dock and the digitizing map tool."""

from __future__ import annotations

import os

from qgis.core import QgsApplication, QgsProject
from qgis.PyQt.QtCore import Qt

from . import settings
from .compat import QAction
from .processing.provider import PointSamProvider

DIGITIZED_FILE = "pointsam_digitized.gpkg"


class PointSamPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.dock = None
        self.action = None
        self.tool = None

    def initProcessing(self) -> None:  # noqa: N802
        self.provider = PointSamProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802
        from .gui.dock import PointSamDock

        self.initProcessing()
        self.dock = PointSamDock(self._client, self.iface.mainWindow(), notify=self._warn)
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.action = QAction("PointSAM: digitize by clicking", self.iface.mainWindow())
        self.action.setCheckable(True)
        self.action.toggled.connect(self._digitize)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToMenu("PointSAM", self.action)

    def unload(self) -> None:
        if self.action is not None:
            self.iface.removeToolBarIcon(self.action)
            self.iface.removePluginMenu("PointSAM", self.action)
            self.action = None
        if self.dock is not None:
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        settings.stop_engine()

    def _warn(self, text: str) -> None:
        bar = self.iface.messageBar()
        if bar is not None:
            bar.pushWarning("PointSAM", text)

    def _client(self):
        return settings.engine().client()

    def _digitize(self, on: bool) -> None:
        canvas = self.iface.mapCanvas()
        if not on:
            if self.tool is not None:
                canvas.unsetMapTool(self.tool)
            return
        from .gui.map_tool import PointSamMapTool
        from .layers import digitized_layer

        def target():
            folder = QgsProject.instance().homePath() or os.path.expanduser("~")
            return digitized_layer(os.path.join(folder, DIGITIZED_FILE), canvas.mapSettings().destinationCrs())

        self.tool = PointSamMapTool(canvas, self.dock.raster.currentLayer, self._client, target, self.dock.choice)
        self.tool.message.connect(self._warn)
        canvas.setMapTool(self.tool)
