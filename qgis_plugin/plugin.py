"""The plugin object QGIS loads: registers the Processing provider; stops the engine on unload."""

from __future__ import annotations

from qgis.core import QgsApplication

from . import settings
from .processing.provider import PointSamProvider


class PointSamPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None

    def initProcessing(self) -> None:  # noqa: N802
        self.provider = PointSamProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802
        self.initProcessing()

    def unload(self) -> None:
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        settings.stop_engine()
