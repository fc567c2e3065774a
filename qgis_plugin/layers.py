"""Layers the plugin writes: the GeoPackage-backed "PointSAM digitized" layer with the batch output's fields,
objects added through a layer's edit buffer, and point layers written for the engine."""

from __future__ import annotations

import os

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransformContext,
    QgsFeature,
    QgsField,
    QgsFields,
    QgsFillSymbol,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsVectorFileWriter,
    QgsVectorLayer,
    QgsWkbTypes,
)

from . import palette
from .compat import field_type
from .errors import PluginError

DIGITIZED = "PointSAM digitized"
FIELDS = (("score", "Double"), ("area_m2", "Double"), ("length_m", "Double"), ("width_m", "Double"),
          ("angle_deg", "Double"), ("n_pos", "Int"), ("n_neg", "Int"), ("model", "String"), ("source", "String"))
WRITER_OK = QgsVectorFileWriter.WriterError.NoError


def digitized_fields() -> QgsFields:
    fields = QgsFields()
    for name, kind in FIELDS:
        fields.append(QgsField(name, field_type(kind)))
    return fields


def digitized_layer(path: str, crs: QgsCoordinateReferenceSystem) -> QgsVectorLayer:
    """The digitized layer in the project, created in ``path`` (a GeoPackage) when it is not there yet."""
    for layer in QgsProject.instance().mapLayersByName(DIGITIZED):
        return layer
    if not os.path.exists(path):
        options = QgsVectorFileWriter.SaveVectorOptions()
        options.driverName, options.layerName = "GPKG", "digitized"
        writer = QgsVectorFileWriter.create(path, digitized_fields(), QgsWkbTypes.Type.MultiPolygon, crs,
                                            QgsCoordinateTransformContext(), options)
        if writer.hasError():
            raise PluginError(f"cannot create {path}: {writer.errorMessage()}")
        del writer
    layer = QgsVectorLayer(f"{path}|layername=digitized", DIGITIZED, "ogr")
    if not layer.isValid():
        raise PluginError(f"{path} has no layer 'digitized'; choose another file for digitized objects")
    style_digitized(layer)
    QgsProject.instance().addMapLayer(layer)
    return layer


def add_object(layer: QgsVectorLayer, answer: dict, n_pos: int, n_neg: int, source: str) -> QgsFeature:
    """Add one /v1/predict answer (GeoJSON in the layer's CRS) to the layer's edit buffer, so Ctrl+Z undoes it.

    The layer is put in edit mode when it is not; the analyst saves with QGIS's Save Layer Edits. Any polygon
    layer works: fields it lacks are skipped, and a single-polygon layer gets a one-part object as a Polygon.
    """
    if not layer.isEditable() and not layer.startEditing():
        raise PluginError(f"{layer.name()} cannot be edited (read-only file or provider); choose another target layer")
    feature = QgsFeature(layer.fields())
    feature.setGeometry(_fit_geometry(polygon_geometry(answer["object"]["geometry"]), layer))
    values = {**answer["object"]["properties"], "n_pos": n_pos, "n_neg": n_neg, "source": source}
    for name, _ in FIELDS:
        if name in values and layer.fields().indexOf(name) >= 0:
            feature[name] = values[name]
    if not layer.addFeature(feature):
        raise PluginError(f"cannot add the object to {layer.name()}; check that the layer is editable")
    layer.triggerRepaint()
    return feature


def _fit_geometry(geometry: QgsGeometry, layer: QgsVectorLayer) -> QgsGeometry:
    if QgsWkbTypes.isMultiType(layer.wkbType()):
        geometry.convertToMultiType()
    elif geometry.isMultipart() and not geometry.convertToSingleType():
        parts = geometry.constGet().numGeometries()
        raise PluginError(f"this object has {parts} separate parts and {layer.name()} holds single polygons; "
                          "click the parts one at a time, or choose a multipolygon layer")
    return geometry


def style_digitized(layer: QgsVectorLayer) -> None:
    """A readable default look on imagery: a semi-transparent magenta fill with a clear magenta outline."""
    symbol = QgsFillSymbol.createSimple({"color": palette.rgba(palette.DIGITIZED, 60),
                                         "outline_color": palette.rgba(palette.DIGITIZED),
                                         "outline_width": "0.7", "outline_width_unit": "MM"})
    layer.renderer().setSymbol(symbol)
    layer.triggerRepaint()


def polygon_geometry(geojson: dict) -> QgsGeometry:
    """A GeoJSON Polygon or MultiPolygon (dict) as a QgsGeometry."""
    def rings(polygon):
        return [[QgsPointXY(x, y) for x, y, *_ in ring] for ring in polygon]

    if geojson["type"] == "Polygon":
        return QgsGeometry.fromPolygonXY(rings(geojson["coordinates"]))
    if geojson["type"] == "MultiPolygon":
        return QgsGeometry.fromMultiPolygonXY([rings(p) for p in geojson["coordinates"]])
    raise PluginError(f"the engine answered a {geojson['type']}, not a polygon")


def write_layer(layer: QgsVectorLayer, path: str, name: str = "points", selected_only: bool = False) -> str:
    """A layer's features (or the selected ones) as the GeoPackage layer ``name`` in ``path``, for the engine
    to read. Features keep their ids (GeoPackage ``fid``), which the engine's ``point_fid`` refers to."""
    if selected_only and layer.selectedFeatureCount() == 0:
        raise PluginError(f"nothing is selected in {layer.name()}; select features or untick 'Selected features only'")
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName, options.layerName, options.onlySelectedFeatures = "GPKG", name, selected_only
    error = QgsVectorFileWriter.writeAsVectorFormatV3(layer, path, QgsProject.instance().transformContext(), options)
    if error[0] != WRITER_OK:
        raise PluginError(f"cannot write {layer.name()} for the engine: {error[1]}")
    return path


def skipped_reasons(gpkg: str) -> list:
    """The ``reason`` of each click a segment run skipped (its ``skipped`` layer), for the log's summary."""
    layer = QgsVectorLayer(f"{gpkg}|layername=skipped", "skipped", "ogr")
    reasons = [f["reason"] for f in layer.getFeatures()] if layer.isValid() and "reason" in layer.fields().names() else []
    del layer
    return reasons
