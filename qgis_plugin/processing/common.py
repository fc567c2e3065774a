"""What the PointSAM algorithms share: parameters several of them take, layers written to temporary
GeoPackages for the engine, outputs written into GeoPackages without dropping their other layers, and the
engine call (job progress, stage and cancel; errors become ``QgsProcessingException`` with the engine's
one-line message in the words of the algorithm's fields).

The Model parameter offers the models the engine last listed (:mod:`qgis_plugin.catalog`): the algorithms
are built on the GUI thread and in ``qgis_process``, where the engine is never called."""

from __future__ import annotations

import os
import re
from typing import Callable, Dict, Iterable, TypeVar

from qgis.core import (
    QgsFeatureRequest,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProperty,
)

from .. import catalog, settings
from ..client import EngineClient
from ..defaults import SEGMENT
from ..errors import PluginError
from ..layers import write_layer
from ..messages import in_plugin_terms, parse_bands, stage_text

RASTER, POINTS = "RASTER", "POINTS"
INSTANCE_FIELD, LABEL_FIELD, CLASS_FIELD = "INSTANCE_FIELD", "LABEL_FIELD", "CLASS_FIELD"
SAR_DB, BANDS, MODEL, MODEL_FILE, ADAPTER = "SAR_DB", "BANDS", "MODEL", "MODEL_FILE", "ADAPTER"
ENGINE_DEFAULT = "engine default"  # Model's value for the model the engine was started with (also: empty)

FIELD_LABELS = {INSTANCE_FIELD: ("instance_field", "Instance field (points with one value are one object)"),
                LABEL_FIELD: ("label_field", "Label field (1 positive, 0 negative)"),
                CLASS_FIELD: ("class_field", "Class field (carried to the output)")}

URI = re.compile(r"^[A-Za-z]{2,}:")  # ogr:, postgres:, memory: (not a drive letter)
T = TypeVar("T")


class EngineAlgorithm(QgsProcessingAlgorithm):
    """Base of the PointSAM algorithms: shared parameters, their reading, and the engine call.

    Subclasses set ``NAME`` (the stable id after ``pointsam:``), ``DISPLAY_NAME`` and ``HELP``.
    """

    NAME = DISPLAY_NAME = HELP = ""

    def __init__(self):
        super().__init__()
        self.copies: Dict[str, str] = {}  # the run's copies of the analyst's layers (path -> layer name)

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
        self.addParameter(QgsProcessingParameterBoolean(SAR_DB, "SAR: stretch in dB", SEGMENT["sar_db"]))
        self.addParameter(QgsProcessingParameterString(BANDS, "Bands (e.g. 3,2,1 or 1)", optional=True))

    def add_model(self, adapter: bool = True) -> None:
        """Model: "engine default" or one of the installed models the engine last listed; scripts and
        ``qgis_process`` may give any name or checkpoint path. Model file: a checkpoint on disk, for the dialog."""
        model = QgsProcessingParameterString(MODEL, "Model", ENGINE_DEFAULT, optional=True)
        # a list to choose from in the dialog; a Refresh in the dock or a download brings it up to date
        model.setMetadata({"widget_wrapper": {"value_hints": [ENGINE_DEFAULT, *catalog.installed_model_names()]}})
        self.addParameter(model)
        self.addParameter(QgsProcessingParameterFile(MODEL_FILE, "Model checkpoint file (instead of Model)",
                                                     optional=True, fileFilter="SAM checkpoint (*.pth *.pt)"))
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
        bands = self.engine_call(lambda: parse_bands(self.parameterAsString(parameters, BANDS, context) or ""))
        if bands:
            body["bands"] = bands
        for key, field in ((MODEL, "model"), (MODEL_FILE, "model"), (ADAPTER, "adapter")):  # the file wins
            value = (self.parameterAsString(parameters, key, context) or "").strip()
            if value and value != ENGINE_DEFAULT and self.parameterDefinition(key) is not None:
                body[field] = value
        return body

    def write_source(self, parameters, key: str, context, folder: str, name: str) -> str:
        """The features of the source parameter ``key`` as layer ``name`` of a GeoPackage in ``folder``."""
        source = self.parameterAsSource(parameters, key, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, key))
        path = self.engine_call(lambda: write_layer(source.materialize(QgsFeatureRequest()),
                                                    os.path.join(folder, f"{name}.gpkg"), name))
        self.copies[path] = source.sourceName()
        return path

    # -- the engine ---------------------------------------------------------------------------------
    def engine_call(self, call: Callable[[], T]) -> T:
        """``call()``, with the plugin's one-line errors raised as ``QgsProcessingException``."""
        try:
            return call()
        except PluginError as exc:
            raise QgsProcessingException(in_plugin_terms(str(exc), self.copies)) from None

    def client(self, feedback) -> EngineClient:
        if settings.engine_starts_on_next_call():
            feedback.setProgressText("starting engine…")
        client = self.engine_call(lambda: settings.engine().client())
        feedback.pushInfo(f"PointSAM engine at {client.url}")
        return client

    def run_job(self, kind: str, body: dict, feedback) -> dict:
        """Submit an engine job and follow it: progress and stage to ``feedback``, cancelled with it. Returns its
        result."""
        client = self.client(feedback)
        shown = {"stage": None}

        def report(fraction: float, stage: str) -> None:
            if stage != shown["stage"]:
                shown["stage"] = stage
                feedback.setProgressText(stage_text(stage))
            feedback.setProgress(100 * fraction)

        return self.engine_call(lambda: client.follow(client.submit(kind, **body), report, feedback.isCanceled))


def into_geopackage(parameters: dict, key: str, layer: str) -> dict:
    """``parameters`` where the sink ``key``, when it names a GeoPackage file, becomes that file's layer ``layer``.

    Given a plain path, Processing writes the file anew and an existing GeoPackage loses its other layers
    (and their styles); as ``ogr:dbname=... table=...`` only a layer of that name is replaced, and several
    sinks can share one file.
    """
    value = parameters.get(key)
    if isinstance(value, QgsProcessingOutputLayerDefinition):
        definition = QgsProcessingOutputLayerDefinition(value)
    elif isinstance(value, str):
        definition = QgsProcessingOutputLayerDefinition(value)
    else:
        return parameters
    path = definition.sink.staticValue()
    if not isinstance(path, str) or not path.lower().endswith(".gpkg") or URI.match(path) or "'" in path:
        return parameters  # TEMPORARY_OUTPUT, an ogr:/postgres: URI, or a name the URI cannot quote
    definition.sink = QgsProperty.fromValue(f"ogr:dbname='{path}' table=\"{layer}\" (geom)")
    return {**parameters, key: definition}
