"""Processing algorithm ``pointsam:segmentrasters`` ("Segment points over many rasters"): the engine's batch job
(``/v1/jobs/batch``, Dask on the engine's machine) over a multiple-raster input, with its progress and cancel.

The points go to a temporary GeoPackage, the engine merges every raster's objects into one GeoPackage, and its
layers are copied into the sinks; the rasters that failed are listed in the log with their reason.
"""

from __future__ import annotations

import os
import tempfile

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsVectorLayer,
)

from .common import POINTS
from .segment_points import SegmentPoints

RASTERS, WORKERS = "RASTERS", "WORKERS"


class SegmentRasters(SegmentPoints):
    NAME, DISPLAY_NAME = "segmentrasters", "Segment points over many rasters"
    HELP = ("One object per click over many rasters (a survey of tiles or scenes): each click goes to the raster "
            "holding it farthest from an edge, the rasters run in parallel on the engine's machine (Dask), and "
            "objects meeting across raster edges are settled so none overlap. The layers get a source field.")

    def initAlgorithm(self, config=None):  # noqa: N802
        super().initAlgorithm(config)
        self.removeParameter("RASTER")
        rasters = QgsProcessingParameterMultipleLayers(RASTERS, "Rasters", QgsProcessing.SourceType.TypeRaster)
        self.addParameter(rasters)
        self.addParameter(QgsProcessingParameterNumber(WORKERS, "Worker processes (empty: one per core)",
                                                       QgsProcessingParameterNumber.Type.Integer, None,
                                                       optional=True, minValue=1))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_sinks(parameters, context)
        layers = self.parameterAsLayerList(parameters, RASTERS, context)
        with tempfile.TemporaryDirectory(prefix="pointsam-") as folder:
            output = os.path.join(folder, "result.gpkg")
            body = {"rasters": [layer.source() for layer in layers],
                    "points": self.write_source(parameters, POINTS, context, folder, "points"),
                    "output": output, "calibration": self.parameterAsBool(parameters, self.CALIBRATION, context),
                    "min_area": self.parameterAsDouble(parameters, self.MIN_AREA, context),
                    **self.options(parameters, context, ("INSTANCE_FIELD", "LABEL_FIELD", "CLASS_FIELD"))}
            if parameters.get(self.SIMPLIFY) not in (None, ""):
                body["simplify"] = self.parameterAsDouble(parameters, self.SIMPLIFY, context)
            if parameters.get(WORKERS) not in (None, ""):
                body["workers"] = self.parameterAsInt(parameters, WORKERS, context)
            body["regularize"] = self.OUTLINES[self.parameterAsEnum(parameters, self.REGULARIZE, context)]
            try:
                result = self.run_job("batch", body, feedback)
            except QgsProcessingException:
                if feedback.isCanceled():  # the engine keeps finished tasks for --resume; here they go with the folder
                    raise QgsProcessingException("the batch was cancelled; nothing was written") from None
                raise
            failed = QgsVectorLayer(f"{output}|layername=failed", "failed", "ogr")
            for feature in failed.getFeatures() if failed.isValid() else []:
                feedback.pushWarning(f"{feature['source']}: {feature['reason']}")
            del failed
            feedback.pushInfo(f"{result['report']['instances']} instances from {result['report']['tasks']} tasks")
            return self._copy_layers(output, parameters, context)
