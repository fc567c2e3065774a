"""Layers the plugin writes: the GeoPackage-backed "PointSAM digitized" layer with the batch output's fields."""

from __future__ import annotations

import os

from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransformContext, QgsFeature, QgsField, QgsFields,
                       QgsGeometry, QgsPointXY, QgsProject, QgsVectorFileWriter, QgsVectorLayer, QgsWkbTypes)
from qgis.PyQt.QtCore import QVariant

from .errors import PluginError

DIGITIZED = "PointSAM digitized"
FIELDS = (("score", QVariant.Double), ("area_m2", QVariant.Double), ("length_m", QVariant.Double),
          ("width_m", QVariant.Double), ("angle_deg", QVariant.Double), ("n_pos", QVariant.Int),
          ("n_neg", QVariant.Int), ("model", QVariant.String), ("source", QVariant.String))


def digitized_fields() -> QgsFields:
    fields = QgsFields()
    for name, kind in FIELDS:
        fields.append(QgsField(name, kind))
    return fields


def digitized_layer(path: str, crs: QgsCoordinateReferenceSystem) -> QgsVectorLayer:
    """The digitized layer in the project, created in ``path`` (a GeoPackage) when it is not there yet."""
    for layer in QgsProject.instance().mapLayersByName(DIGITIZED):
        return layer
    if not os.path.exists(path):
        options = QgsVectorFileWriter.SaveVectorOptions()
        options.driverName, options.layerName = "GPKG", "digitized"
        writer = QgsVectorFileWriter.create(path, digitized_fields(), QgsWkbTypes.MultiPolygon, crs,
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


def write_points(layer: QgsVectorLayer, path: str, selected_only: bool = False) -> str:
    """Points (or the selected ones) as a GeoPackage layer ``points`` for the engine to read."""
    if selected_only and layer.selectedFeatureCount() == 0:
        raise PluginError(f"nothing is selected in {layer.name()}; select points or untick 'Selected features only'")
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName, options.layerName, options.onlySelectedFeatures = "GPKG", "points", selected_only
    error = QgsVectorFileWriter.writeAsVectorFormatV3(layer, path, QgsProject.instance().transformContext(), options)
    if error[0] != QgsVectorFileWriter.NoError:
        raise PluginError(f"cannot write the points for the engine: {error[1]}")
    return path
