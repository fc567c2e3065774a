"""Processing algorithms ``pointsam:segmentpoints`` (one instance polygon, oriented box and axis box per
click) and ``pointsam:pointstoboxes`` (the boxes only: rotated boxes as pseudo-labels for oriented detectors).

The points are written to a temporary GeoPackage, the engine runs a segment job on the raster's file,
and its GeoPackage layers are copied into the algorithm's sinks. Progress, stage and cancel follow the job;
the clicks the engine skipped are counted per reason in the log. A sink given as a GeoPackage file gets
its layer added to that file: the file's other layers are kept.
"""

from __future__ import annotations

import os
import re
import tempfile

from qgis.core import (
    QgsFeatureSink,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterNumber,
    QgsVectorLayer,
)

from ..defaults import CHOICES, SEGMENT
from ..layers import skipped_reasons
from ..messages import OUTLINES as OUTLINE_LABELS
from ..messages import skipped_summary
from .common import CLASS_FIELD, INSTANCE_FIELD, LABEL_FIELD, POINTS, RASTER, URI, EngineAlgorithm, into_geopackage

FIELDS = (INSTANCE_FIELD, LABEL_FIELD, CLASS_FIELD)


class SegmentPoints(EngineAlgorithm):
    CALIBRATION, MIN_AREA, SIMPLIFY, REGULARIZE = "CALIBRATION", "MIN_AREA", "SIMPLIFY", "REGULARIZE"
    OUTLINES = tuple(CHOICES["regularize"])  # the engine's --regularize values, in its order
    SINKS = (("INSTANCES", "Instances", "instances"), ("BOXES", "Oriented boxes", "boxes"),
             ("BBOXES", "Axis boxes", "bboxes"))  # parameter, label, the engine's layer

    NAME, DISPLAY_NAME = "segmentpoints", "Segment points"
    HELP = ("One object per click (or per instance field value): SAM with calibrated negative prompts turns "
            "points over a raster into instance polygons, oriented boxes and axis-aligned boxes.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_raster_and_points(FIELDS)
        self.addParameter(QgsProcessingParameterBoolean(self.CALIBRATION, "Negative prompt calibration",
                                                        SEGMENT["calibration"]))
        self.add_raster_options()
        self.addParameter(QgsProcessingParameterNumber(self.MIN_AREA, "Minimum area (m²)",
                                                       QgsProcessingParameterNumber.Type.Double, SEGMENT["min_area"],
                                                       minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(self.SIMPLIFY, "Simplify (m; empty: one pixel)",
                                                       QgsProcessingParameterNumber.Type.Double, SEGMENT["simplify"],
                                                       optional=True,
                                                       minValue=0.0))
        self.addParameter(QgsProcessingParameterEnum(
            self.REGULARIZE, f"Regularize ({OUTLINE_LABELS['buildings']}; {OUTLINE_LABELS['ships']})", list(self.OUTLINES),
            defaultValue=self.OUTLINES.index(SEGMENT["regularize"])))
        self.add_model()
        for key, label, _ in self.SINKS:
            self.addParameter(QgsProcessingParameterFeatureSink(key, label, QgsProcessing.SourceType.TypeVectorPolygon))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_sinks(parameters, context)
        raster = self.parameterAsRasterLayer(parameters, RASTER, context)
        with tempfile.TemporaryDirectory(prefix="pointsam-") as folder:
            output = os.path.join(folder, "result.gpkg")
            body = {"raster": raster.source(), "points": self.write_source(parameters, POINTS, context, folder, "points"),
                    "output": output, "calibration": self.parameterAsBool(parameters, self.CALIBRATION, context),
                    "min_area": self.parameterAsDouble(parameters, self.MIN_AREA, context),
                    **self.options(parameters, context, FIELDS)}
            if parameters.get(self.SIMPLIFY) not in (None, ""):
                body["simplify"] = self.parameterAsDouble(parameters, self.SIMPLIFY, context)
            body["regularize"] = self.OUTLINES[self.parameterAsEnum(parameters, self.REGULARIZE, context)]
            self.run_job("segment", body, feedback)
            skipped = skipped_summary(skipped_reasons(output))
            if skipped:
                feedback.pushWarning(skipped)
            return self._copy_layers(output, parameters, context)

    def check_sinks(self, parameters, context) -> None:
        """Refuse, before the engine runs, an output file QGIS could not write when the results are copied in."""
        for key, label, _ in self.SINKS:
            path = _output_file(self.parameterAsOutputLayer(parameters, key, context))
            if path is None:
                continue  # a temporary layer, or a database QGIS reaches itself
            folder = os.path.dirname(path)
            if not os.path.isdir(folder):
                raise QgsProcessingException(f"{label}: the folder {folder} does not exist; choose another output")
            # a GeoPackage also writes a journal beside itself: its folder must be writable too
            for target in (folder, path) if os.path.exists(path) else (folder,):
                if not os.access(target, os.W_OK):
                    raise QgsProcessingException(f"{label}: {target} is not writable; choose another output")

    def _copy_layers(self, gpkg: str, parameters, context) -> dict:
        results = {}
        for key, _, layer_name in self.SINKS:
            layer = QgsVectorLayer(f"{gpkg}|layername={layer_name}", layer_name, "ogr")
            if not layer.isValid():
                raise QgsProcessingException(f"the engine's output has no layer {layer_name}")
            sink, dest = self.parameterAsSink(into_geopackage(parameters, key, layer_name), key, context,
                                              layer.fields(), layer.wkbType(), layer.crs())
            for feature in layer.getFeatures():
                sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert)
            results[key] = dest
            del layer
        return results


def _output_file(destination: str):
    """The file an output destination writes (a path, or the ``dbname`` of an ``ogr:`` URI); None for a
    temporary layer or a database."""
    match = OGR_FILE.match(destination or "")
    if match:
        return os.path.abspath(match.group(1))
    return None if not destination or URI.match(destination) else os.path.abspath(destination)


OGR_FILE = re.compile(r"^ogr:dbname='([^']+)'")


class PointsToBoxes(SegmentPoints):
    SINKS = (("BOXES", "Oriented boxes", "boxes"), ("BBOXES", "Axis boxes", "bboxes"))

    NAME, DISPLAY_NAME = "pointstoboxes", "Points to boxes"
    HELP = ("One oriented box (minimum rotated rectangle, with angle, length and width) and one axis-aligned box "
            "per click: point labels become box labels, e.g. pseudo-labels for an oriented object detector.")

