"""What the PointSAM algorithms share: parameters several of them take, layers written to temporary
GeoPackages for the engine, and the engine call (job progress and cancel; errors become
``QgsProcessingException`` with the engine's one-line message)."""

from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, TypeVar

from qgis.core import (QgsFeatureRequest, QgsProcessing, QgsProcessingAlgorithm, QgsProcessingException,
                       QgsProcessingParameterBoolean, QgsProcessingParameterFeatureSource,
                       QgsProcessingParameterField, QgsProcessingParameterFile, QgsProcessingParameterRasterLayer,
                       QgsProcessingParameterString)

from .. import settings
from ..client import EngineClient
from ..errors import PluginError
from ..layers import write_layer

RASTER, POINTS = "RASTER", "POINTS"
INSTANCE_FIELD, LABEL_FIELD, CLASS_FIELD = "INSTANCE_FIELD", "LABEL_FIELD", "CLASS_FIELD"
SAR_DB, BANDS, MODEL, ADAPTER = "SAR_DB", "BANDS", "MODEL", "ADAPTER"

FIELD_LABELS = {INSTANCE_FIELD: ("instance_field", "Instance field (points with one value are one object)"),
                LABEL_FIELD: ("label_field", "Label field (1 positive, 0 negative)"),
                CLASS_FIELD: ("class_field", "Class field (carried to the output)")}

T = TypeVar("T")


class EngineAlgorithm(QgsProcessingAlgorithm):
    """Base of the PointSAM algorithms: shared parameters, their reading, and the engine call.

    Subclasses set ``NAME`` (the stable id after ``pointsam:``), ``DISPLAY_NAME`` and ``HELP``.
    """

    NAME = DISPLAY_NAME = HELP = ""

    def name(self) -> str:
        return self.NAME

    def displayName(self) -> str:  # noqa: N802
        return self.DISPLAY_NAME

    def shortHelpString(self) -> str:  # noqa: N802
        return self.HELP

    def createInstance(self):  # noqa: N802
        return type(self)()

    # -- parameters ---------------------------------------------------------------------------------
    def add_raster_and_points(self, fields: Iterable[str] = (INSTANCE_FIELD, LABEL_FIELD, CLASS_FIELD)) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer(RASTER, "Raster"))
        self.addParameter(QgsProcessingParameterFeatureSource(POINTS, "Points",
                                                              [QgsProcessing.SourceType.TypeVectorPoint]))
        for key in fields:
            self.addParameter(QgsProcessingParameterField(key, FIELD_LABELS[key][1], parentLayerParameterName=POINTS,
                                                          optional=True))

    def add_raster_options(self) -> None:
        self.addParameter(QgsProcessingParameterBoolean(SAR_DB, "SAR: stretch in dB", False))
        self.addParameter(QgsProcessingParameterString(BANDS, "Bands (e.g. 3,2,1 or 1)", optional=True))

    def add_model(self, adapter: bool = True) -> None:
        self.addParameter(QgsProcessingParameterString(MODEL, "Model (registered name or checkpoint path; "
                                                              "empty: the engine's)", optional=True))
        if adapter:
            self.addParameter(QgsProcessingParameterFile(ADAPTER, "Adapter (trained for the model)", optional=True,
                                                         fileFilter="PointSAM adapter (*.adapter.pt)"))

    # -- reading them -------------------------------------------------------------------------------
    def options(self, parameters, context, fields: Iterable[str] = ()) -> Dict[str, object]:
        """The engine's fields for the given field parameters, the raster options and the model choice."""
        body: Dict[str, object] = {}
        for key in fields:
            name = self.parameterAsString(parameters, key, context)
            if name:
                body[FIELD_LABELS[key][0]] = name
        if self.parameterDefinition(SAR_DB) is not None:
            body["sar_db"] = self.parameterAsBool(parameters, SAR_DB, context)
        bands = (self.parameterAsString(parameters, BANDS, context) or "").strip()
        if bands:
            try:
                body["bands"] = [int(b) for b in bands.split(",")]
            except ValueError:
                raise QgsProcessingException(f"bands {bands!r} are not understood; give 1-based band numbers "
                                             "like 3,2,1 or 1") from None
        for key, field in ((MODEL, "model"), (ADAPTER, "adapter")):
            value = (self.parameterAsString(parameters, key, context) or "").strip()
            if value and self.parameterDefinition(key) is not None:
                body[field] = value
        return body

    def write_source(self, parameters, key: str, context, folder: str, name: str) -> str:
        """The features of the source parameter ``key`` as layer ``name`` of a GeoPackage in ``folder``."""
        source = self.parameterAsSource(parameters, key, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, key))
        return self.engine_call(lambda: write_layer(source.materialize(QgsFeatureRequest()),
                                                    os.path.join(folder, f"{name}.gpkg"), name))

    # -- the engine ---------------------------------------------------------------------------------
    @staticmethod
    def engine_call(call: Callable[[], T]) -> T:
        """``call()``, with the plugin's one-line errors raised as ``QgsProcessingException``."""
        try:
            return call()
        except PluginError as exc:
            raise QgsProcessingException(str(exc)) from None

    def client(self, feedback) -> EngineClient:
        client = self.engine_call(lambda: settings.engine().client())
        feedback.pushInfo(f"PointSAM engine at {client.url}")
        return client

    def run_job(self, kind: str, body: dict, feedback) -> dict:
        """Submit an engine job and follow it: progress to ``feedback``, cancelled with it. Returns its result."""
        client = self.client(feedback)
        return self.engine_call(lambda: client.follow(client.submit(kind, **body),
                                                      lambda fraction, stage: feedback.setProgress(100 * fraction),
                                                      feedback.isCanceled))
