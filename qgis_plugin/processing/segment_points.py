"""Processing algorithm ``pointsam:segmentpoints``: one instance polygon, oriented box and axis box per click.

The points are written to a temporary GeoPackage, the engine runs a segment job on the raster's file,
and its GeoPackage layers are copied into the algorithm's sinks. Progress and cancel follow the job.
"""

from __future__ import annotations

import os
import tempfile

from qgis.core import (QgsFeatureRequest, QgsFeatureSink, QgsProcessing, QgsProcessingAlgorithm, QgsProcessingException,
                       QgsProcessingParameterBoolean, QgsProcessingParameterFeatureSink,
                       QgsProcessingParameterFeatureSource, QgsProcessingParameterField,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterLayer, QgsProcessingParameterString,
                       QgsVectorLayer)

from .. import settings
from ..errors import PluginError
from ..layers import write_points

OUTPUTS = {"INSTANCES": "instances", "BOXES": "boxes", "BBOXES": "bboxes"}


class SegmentPoints(QgsProcessingAlgorithm):
    RASTER, POINTS = "RASTER", "POINTS"
    INSTANCE_FIELD, LABEL_FIELD, CLASS_FIELD = "INSTANCE_FIELD", "LABEL_FIELD", "CLASS_FIELD"
    CALIBRATION, SAR_DB, BANDS, MIN_AREA, SIMPLIFY = "CALIBRATION", "SAR_DB", "BANDS", "MIN_AREA", "SIMPLIFY"

    def name(self) -> str:
        return "segmentpoints"

    def displayName(self) -> str:  # noqa: N802
        return "Segment points"

    def shortHelpString(self) -> str:  # noqa: N802
        return ("One object per click (or per instance field value): SAM with calibrated negative prompts turns "
                "points over a raster into instance polygons, oriented boxes and axis-aligned boxes.")

    def createInstance(self):  # noqa: N802
        return SegmentPoints()

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.RASTER, "Raster"))
        self.addParameter(QgsProcessingParameterFeatureSource(self.POINTS, "Points", [QgsProcessing.TypeVectorPoint]))
        for key, label in ((self.INSTANCE_FIELD, "Instance field (points with one value are one object)"),
                           (self.LABEL_FIELD, "Label field (1 positive, 0 negative)"),
                           (self.CLASS_FIELD, "Class field (carried to the output)")):
            self.addParameter(QgsProcessingParameterField(key, label, parentLayerParameterName=self.POINTS, optional=True))
        self.addParameter(QgsProcessingParameterBoolean(self.CALIBRATION, "Negative prompt calibration", True))
        self.addParameter(QgsProcessingParameterBoolean(self.SAR_DB, "SAR: stretch in dB", False))
        self.addParameter(QgsProcessingParameterString(self.BANDS, "Bands (e.g. 3,2,1 or 1)", optional=True))
        self.addParameter(QgsProcessingParameterNumber(self.MIN_AREA, "Minimum area (map units²)",
                                                       QgsProcessingParameterNumber.Double, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(self.SIMPLIFY, "Simplify tolerance (map units; empty: one pixel)",
                                                       QgsProcessingParameterNumber.Double, None, optional=True, minValue=0.0))
        for key, label in (("INSTANCES", "Instances"), ("BOXES", "Oriented boxes"), ("BBOXES", "Axis boxes")):
            self.addParameter(QgsProcessingParameterFeatureSink(key, label, QgsProcessing.TypeVectorPolygon))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        raster = self.parameterAsRasterLayer(parameters, self.RASTER, context)
        source = self.parameterAsSource(parameters, self.POINTS, context)
        with tempfile.TemporaryDirectory(prefix="pointsam-") as folder:
            try:
                points = write_points(source.materialize(QgsFeatureRequest()), os.path.join(folder, "points.gpkg"))
            except PluginError as exc:
                raise QgsProcessingException(str(exc)) from None
            output = os.path.join(folder, "result.gpkg")
            body = {"raster": raster.source(), "points": points, "output": output,
                    "calibration": self.parameterAsBool(parameters, self.CALIBRATION, context),
                    "sar_db": self.parameterAsBool(parameters, self.SAR_DB, context),
                    "min_area": self.parameterAsDouble(parameters, self.MIN_AREA, context)}
            for key, field in ((self.INSTANCE_FIELD, "instance_field"), (self.LABEL_FIELD, "label_field"),
                               (self.CLASS_FIELD, "class_field")):
                name = self.parameterAsString(parameters, key, context)
                if name:
                    body[field] = name
            bands = self.parameterAsString(parameters, self.BANDS, context).strip()
            if bands:
                body["bands"] = [int(b) for b in bands.split(",")]
            if parameters.get(self.SIMPLIFY) not in (None, ""):
                body["simplify"] = self.parameterAsDouble(parameters, self.SIMPLIFY, context)
            try:
                client = settings.engine().client()
                feedback.pushInfo(f"PointSAM engine at {client.url}")
                client.follow(client.submit("segment", **body), lambda f, stage: feedback.setProgress(100 * f),
                              feedback.isCanceled)
            except PluginError as exc:
                raise QgsProcessingException(str(exc)) from None
            return self._copy_layers(output, parameters, context)

    def _copy_layers(self, gpkg: str, parameters, context) -> dict:
        results = {}
        for key, layer_name in OUTPUTS.items():
            layer = QgsVectorLayer(f"{gpkg}|layername={layer_name}", layer_name, "ogr")
            if not layer.isValid():
                raise QgsProcessingException(f"the engine's output has no layer {layer_name}")
            sink, dest = self.parameterAsSink(parameters, key, context, layer.fields(), layer.wkbType(), layer.crs())
            for feature in layer.getFeatures():
                sink.addFeature(feature, QgsFeatureSink.FastInsert)
            results[key] = dest
            del layer
        return results
