"""The Processing provider "PointSAM" (id ``pointsam``); its algorithms are built again when the plugin learns
of other installed models (a dock Refresh, a download), so Model offers them."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider

from .. import catalog
from .evaluate import Evaluate
from .finetune import FineTune
from .segment_points import PointsToBoxes, SegmentPoints
from .segment_rasters import SegmentRasters


class PointSamProvider(QgsProcessingProvider):
    def __init__(self):
        super().__init__()
        catalog.changes.models.connect(self.refreshAlgorithms)

    def id(self) -> str:  # noqa: A003
        return "pointsam"

    def name(self) -> str:
        return "PointSAM"

    def longName(self) -> str:  # noqa: N802
        return "PointSAM: point-prompted SAM segmentation"

    def loadAlgorithms(self) -> None:  # noqa: N802
        for algorithm in (SegmentPoints(), PointsToBoxes(), SegmentRasters(), FineTune(), Evaluate()):
            self.addAlgorithm(algorithm)

    def unload(self) -> None:
        catalog.changes.models.disconnect(self.refreshAlgorithms)
        super().unload()
