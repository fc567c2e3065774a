"""The Processing provider "PointSAM" (id ``pointsam``)."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider

from .evaluate import Evaluate
from .finetune import FineTune
from .segment_points import PointsToBoxes, SegmentPoints


class PointSamProvider(QgsProcessingProvider):
    def id(self) -> str:  # noqa: A003
        return "pointsam"

    def name(self) -> str:
        return "PointSAM"

    def longName(self) -> str:  # noqa: N802
        return "PointSAM: point-prompted SAM segmentation"

    def loadAlgorithms(self) -> None:  # noqa: N802
        for algorithm in (SegmentPoints(), PointsToBoxes(), FineTune(), Evaluate()):
            self.addAlgorithm(algorithm)
