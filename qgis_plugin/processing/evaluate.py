"""Processing algorithm ``pointsam:evaluate``: the paper's per-instance IoU and F1 against reference polygons.

The instances (any polygon layer with ``point_fid``, e.g. Segment points' output), the reference polygons
and the optional points are written to temporary GeoPackages; the engine scores them on the raster's grid
(``/v1/evaluate``). The figures are outputs (numbers a model can pass on) and, optionally, a JSON file.
"""

from __future__ import annotations

import json
import os
import tempfile

from qgis.core import (
    QgsProcessing,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterRasterLayer,
)

from .common import POINTS, RASTER, EngineAlgorithm

FIGURES = (("MIOU", "miou", "mIoU"), ("MF1", "mf1", "mF1"), ("INSTANCES", "instances", "Instances scored"),
           ("MERGES", "merges", "Merges"), ("MISSED_POINTS", "missed_points", "Missed points"),
           ("CLICKS_OFF_RASTER", "clicks_off_raster", "Clicks off the raster (not scored)"))


class Evaluate(EngineAlgorithm):
    PREDICTIONS, REFERENCE, JSON = "PREDICTIONS", "REFERENCE", "JSON"

    NAME, DISPLAY_NAME = "evaluate", "Evaluate against reference polygons"
    HELP = ("Per-instance IoU and F1 on the raster's grid, averaged (mIoU, mF1): each instance is paired with "
            "the reference polygon holding its click (through point_fid when the points are given). Also "
            "counts missed clicks (IoU 0), merges (an instance covering half of another reference object) and clicks "
            "off the raster, which are not scored.")

    def initAlgorithm(self, config=None):  # noqa: N802
        polygons = [QgsProcessing.SourceType.TypeVectorPolygon]
        self.addParameter(QgsProcessingParameterFeatureSource(self.PREDICTIONS, "Instances (polygons with point_fid)",
                                                              polygons))
        self.addParameter(QgsProcessingParameterFeatureSource(self.REFERENCE, "Reference polygons", polygons))
        self.addParameter(QgsProcessingParameterFeatureSource(POINTS, "Points the instances came from",
                                                              [QgsProcessing.SourceType.TypeVectorPoint], optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(RASTER, "Raster (the grid to compare on)"))
        self.addParameter(QgsProcessingParameterFileDestination(self.JSON, "Figures (JSON)", "JSON (*.json)",
                                                                optional=True, createByDefault=False))
        for key, _, label in FIGURES:
            self.addOutput(QgsProcessingOutputNumber(key, label))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        raster = self.parameterAsRasterLayer(parameters, RASTER, context)
        with tempfile.TemporaryDirectory(prefix="pointsam-") as folder:
            body = {"pred": self.write_source(parameters, self.PREDICTIONS, context, folder, "instances"),
                    "truth": self.write_source(parameters, self.REFERENCE, context, folder, "reference"),
                    "raster": raster.source()}
            if self.parameterAsSource(parameters, POINTS, context) is not None:
                body["points"] = self.write_source(parameters, POINTS, context, folder, "points")
            client = self.client(feedback)
            figures = self.engine_call(lambda: client.evaluate(**body))
        results = {key: figures[name] for key, name, _ in FIGURES if name in figures}  # an older engine has fewer
        feedback.pushInfo(json.dumps(figures))
        path = self.parameterAsFileOutput(parameters, self.JSON, context)
        if path:
            with open(path + ".partial", "w") as fh:  # renamed when complete: never a half-written file
                json.dump(figures, fh, indent=2)
            os.replace(path + ".partial", path)
            results[self.JSON] = path
        return results
