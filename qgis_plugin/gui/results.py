"""The layers a run adds to the project: instances, oriented boxes and skipped clicks, styled, in a group of
their own above the raster (``PointSAM: raster``, then ``PointSAM: raster (2)``)."""

from __future__ import annotations

import os
from typing import List

from qgis.core import QgsFillSymbol, QgsMarkerSymbol, QgsProject, QgsProviderRegistry, QgsVectorLayer

from ..errors import PluginError
from ..palette import BOXES, INSTANCES, SKIPPED, rgba

# the layers a segment job writes (pointsam_engine.output.LAYERS): the ones Run may replace in an existing file
RUN_LAYERS = ("instances", "boxes", "bboxes", "skipped")
STYLES = {"instances": {"color": rgba(INSTANCES, 70), "outline_color": rgba(INSTANCES), "outline_width": "0.5"},
          "boxes": {"color": "0,0,0,0", "outline_color": rgba(BOXES), "outline_width": "0.4"}}
SKIPPED_STYLE = {"name": "cross2", "color": rgba(SKIPPED), "outline_color": rgba(SKIPPED), "size": "3"}


def existing_layers(path: str) -> List[str]:
    """The layer names of a vector file (none when OGR cannot read it)."""
    ogr = QgsProviderRegistry.instance().providerMetadata("ogr")
    return [details.name() for details in ogr.querySublayers(path)]


def unique_group_name(root, name: str) -> str:
    """``name``, or ``name (2)``, ``(3)``... when a group of the layer tree already has it."""
    taken = {group.name() for group in root.findGroups(True)}
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name} ({n})"
    return candidate


def add_result_layers(gpkg: str, raster) -> list:
    """Instances and oriented boxes as styled layers (and the skipped clicks, when there are any), in a group of
    its own right above the raster."""
    project = QgsProject.instance()
    root = project.layerTreeRoot()
    node = root.findLayer(raster.id()) if raster is not None else None
    parent = node.parent() if node is not None else root
    index = parent.children().index(node) if node is not None else 0
    title = f"PointSAM: {raster.name() if raster else os.path.basename(gpkg)}"
    layers = []
    for name in ("boxes", "instances"):
        layer = QgsVectorLayer(f"{gpkg}|layername={name}", name, "ogr")
        if not layer.isValid():
            raise PluginError(f"{gpkg} has no layer {name}")
        layer.renderer().setSymbol(QgsFillSymbol.createSimple(STYLES[name]))
        layers.append(layer)
    skipped = QgsVectorLayer(f"{gpkg}|layername=skipped", "skipped", "ogr")
    if skipped.isValid() and skipped.featureCount() > 0:
        skipped.renderer().setSymbol(QgsMarkerSymbol.createSimple(SKIPPED_STYLE))
        layers.append(skipped)
    group = parent.insertGroup(index, unique_group_name(root, title))
    for layer in layers:
        project.addMapLayer(layer, False)
        group.insertLayer(0, layer)
    return layers
