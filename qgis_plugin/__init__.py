"""PointSAM QGIS plugin: point layers over rasters become instance polygons and boxes.

``classFactory`` imports the plugin lazily, so ``import qgis_plugin.client`` works outside QGIS.
"""


def classFactory(iface):  # noqa: N802 (QGIS's name)
    from .plugin import PointSamPlugin

    return PointSamPlugin(iface)
