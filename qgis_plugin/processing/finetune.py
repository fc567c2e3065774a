"""Processing algorithm ``pointsam:finetune``: a region adapter trained from the points alone (``pointsam train``).

The points (and the optional reference polygons for validation) are written to temporary GeoPackages;
the engine runs a train job (``/v1/jobs/train``) on the raster's file and writes the adapter where the
user asked. Progress and cancel follow the job; a cancelled run leaves its checkpoint beside the output.
The adapter is remembered (:mod:`qgis_plugin.catalog`), so the dock offers it wherever it was saved, and
when validation kept step 0 (the adapter changes nothing) the log, the dock and the message bar say so.
"""

from __future__ import annotations

import tempfile

from qgis.core import (
    QgsProcessing,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
)

from .. import catalog
from ..defaults import TRAIN
from .common import INSTANCE_FIELD, LABEL_FIELD, POINTS, RASTER, EngineAlgorithm

FIELDS = (INSTANCE_FIELD, LABEL_FIELD)
SUFFIX = ".adapter.pt"
KEPT_STEP_0 = ("validation kept step 0: the adapter changes nothing (the base model scored best on the held-out "
               "clicks); segment with the base model, or train longer or with more clicks")


def adapter_path(path: str) -> str:
    """``path`` ending in ``.adapter.pt``, the name the engine looks for in adapter folders."""
    if path.endswith(SUFFIX):
        return path
    return (path[:-len(".pt")] if path.endswith(".pt") else path) + SUFFIX


class FineTune(EngineAlgorithm):
    STEPS, RANK, LR, VAL_FRACTION, VAL_POLYGONS = "STEPS", "RANK", "LR", "VAL_FRACTION", "VAL_POLYGONS"
    ANCHOR_WEIGHT = "ANCHOR_WEIGHT"
    OUTPUT = "OUTPUT"

    NAME, DISPLAY_NAME = "finetune", "Fine-tune from points"
    HELP = ("Adapts SAM to a region from one click per object, without masks (the PointSAM method: self-training "
            "with calibrated negative prompts and prototype regularization). Writes a small adapter file for "
            "the model; give it to Segment points as Adapter. Reference polygons, when given, score the "
            "held-out clicks (validation fraction) so the best step is kept. The anchor weight keeps the masks "
            "close to the base model's where self-training would let them grow; 0 trains PointSAM as published.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_raster_and_points(FIELDS)
        integer, double = QgsProcessingParameterNumber.Type.Integer, QgsProcessingParameterNumber.Type.Double
        self.addParameter(QgsProcessingParameterNumber(self.STEPS, "Training steps", integer, TRAIN["steps"], minValue=1))
        self.addParameter(QgsProcessingParameterNumber(self.RANK, "LoRA rank", integer, TRAIN["rank"], minValue=1,
                                                       maxValue=256))
        self.addParameter(QgsProcessingParameterNumber(self.LR, "Learning rate", double, TRAIN["lr"], minValue=1e-7,
                                                       maxValue=1))
        self.addParameter(QgsProcessingParameterNumber(self.VAL_FRACTION, "Validation fraction (clicks held out, "
                                                       "in spatial blocks)", double, TRAIN["val_fraction"], minValue=0,
                                                       maxValue=0.9))
        self.addParameter(QgsProcessingParameterNumber(self.ANCHOR_WEIGHT, "Anchor weight (0: none)", double,
                                                       TRAIN["anchor_weight"], minValue=0, maxValue=100))
        self.addParameter(QgsProcessingParameterFeatureSource(self.VAL_POLYGONS, "Reference polygons for validation",
                                                              [QgsProcessing.SourceType.TypeVectorPolygon], optional=True))
        self.add_raster_options()
        self.add_model(adapter=False)
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT, "Adapter",
                                                                "PointSAM adapter (*.adapter.pt)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        raster = self.parameterAsRasterLayer(parameters, RASTER, context)
        output = adapter_path(self.parameterAsFileOutput(parameters, self.OUTPUT, context))
        with tempfile.TemporaryDirectory(prefix="pointsam-") as folder:
            body = {"rasters": [raster.source()],
                    "points": [self.write_source(parameters, POINTS, context, folder, "points")],
                    "output": output, "overwrite": True,
                    "steps": self.parameterAsInt(parameters, self.STEPS, context),
                    "rank": self.parameterAsInt(parameters, self.RANK, context),
                    "lr": self.parameterAsDouble(parameters, self.LR, context),
                    "val_fraction": self.parameterAsDouble(parameters, self.VAL_FRACTION, context),
                    "anchor_weight": self.parameterAsDouble(parameters, self.ANCHOR_WEIGHT, context),
                    **self.options(parameters, context, FIELDS)}
            if self.parameterAsSource(parameters, self.VAL_POLYGONS, context) is not None:
                body["val_polygons"] = [self.write_source(parameters, self.VAL_POLYGONS, context, folder, "reference")]
            result = self.run_job("train", body, feedback)
        kept = result.get("kept_step")
        feedback.pushInfo(f"adapter written: {result['output']} (the weights of step {kept})")
        if kept == 0:
            feedback.pushWarning(KEPT_STEP_0)
        if result.get("adapter"):
            catalog.remember_adapter(result["adapter"], -1 if kept is None else int(kept))
        return {self.OUTPUT: result["output"]}
