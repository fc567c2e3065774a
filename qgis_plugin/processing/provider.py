"""The Processing provider "PointSAM" (id ``pointsam``)."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider

from .segment_points import SegmentPoints


class PointSamProvider(QgsProcessingProvider):
    def id(self) -> str:  # noqa: A003
        return "pointsam"

    def name(self) -> str:
        return "PointSAM"

    def longName(self) -> str:  # noqa: N802
        return "PointSAM: point-prompted SAM segmentation"

    def loadAlgorithms(self) -> None:  # noqa: N802
        self.addAlgorithm(SegmentPoints())
