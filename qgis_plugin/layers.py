"""Layers the plugin writes: the GeoPackage-backed "PointSAM digitized" layer with the batch output's fields."""

from __future__ import annotations

import os

from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransformContext, QgsFeature, QgsField, QgsFields,
                       QgsGeometry, QgsPointXY, QgsProject, QgsVectorFileWriter, QgsVectorLayer, QgsWkbTypes)

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
    QgsProject.instance().addMapLayer(layer)
    return layer


def add_object(layer: QgsVectorLayer, answer: dict, n_pos: int, n_neg: int, source: str) -> QgsFeature:
    """Append one /v1/predict answer (GeoJSON in the layer's CRS) to the layer and save it."""
    feature = QgsFeature(layer.fields())
    geometry = polygon_geometry(answer["object"]["geometry"])
    geometry.convertToMultiType()
    feature.setGeometry(geometry)
    props = answer["object"]["properties"]
    for name, _ in FIELDS:
        if name in props:
            feature[name] = props[name]
    feature["n_pos"], feature["n_neg"], feature["source"] = n_pos, n_neg, source
    if not layer.dataProvider().addFeatures([feature]):
        raise PluginError(f"cannot add the object to {layer.name()}: {layer.dataProvider().lastError()}")
    layer.triggerRepaint()
    return feature


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
