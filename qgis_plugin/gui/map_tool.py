"""Interactive map tool: click an object, see its polygon, accept it into the "PointSAM digitized" layer.

Left click adds a positive point; right click or Shift+click a negative one. The preview polygon (a rubber
band) updates after each click. Enter or Space accepts it, Backspace removes the last point, Esc clears.
When the cursor rests, the chip under it is encoded ahead of the click (``/v1/prefetch``, off the UI thread).
"""

from __future__ import annotations

import threading
from typing import Callable, List, Optional, Tuple

from qgis.core import QgsRasterLayer, QgsVectorLayer, QgsWkbTypes
from qgis.gui import QgsMapCanvas, QgsMapTool, QgsRubberBand
from qgis.PyQt.QtCore import Qt, QTimer, pyqtSignal
from qgis.PyQt.QtGui import QColor

from ..client import EngineClient
from ..errors import PluginError
from ..layers import add_object, polygon_geometry

REST_MS = 400


class PointSamMapTool(QgsMapTool):
    """Clicks to one object at a time on ``raster()``, accepted into ``target()``; ``choice()`` gives the
    model and adapter fields of each request (the dock's choice)."""

    message = pyqtSignal(str)  # errors and hints for the message bar

    def __init__(self, canvas: QgsMapCanvas, raster: Callable[[], Optional[QgsRasterLayer]],
                 client: Callable[[], EngineClient], target: Callable[[], QgsVectorLayer],
                 choice: Callable[[], dict] = dict):
        super().__init__(canvas)
        self.raster, self.client, self.target, self.choice = raster, client, target, choice
        self.points: List[Tuple[float, float, int]] = []  # x, y (canvas CRS), 1 positive / 0 negative
        self.answer: Optional[dict] = None
        self.band = QgsRubberBand(canvas, QgsWkbTypes.GeometryType.PolygonGeometry)
        self.band.setColor(QColor(255, 200, 0, 90))
        self.band.setStrokeColor(QColor(255, 200, 0))
        self.band.setWidth(2)
        self._rest = QTimer()
        self._rest.setSingleShot(True)
        self._rest.timeout.connect(self._prefetch)
        self._cursor: Optional[Tuple[float, float]] = None

    # -- Qt events ----------------------------------------------------------------------------------
    def canvasReleaseEvent(self, event) -> None:  # noqa: N802
        point = event.mapPoint()
        negative = (event.button() == Qt.MouseButton.RightButton
                    or bool(event.modifiers() & Qt.KeyboardModifier.ShiftModifier))
        self.points.append((point.x(), point.y(), 0 if negative else 1))
        self.refresh()

    def canvasMoveEvent(self, event) -> None:  # noqa: N802
        point = event.mapPoint()
        self._cursor = (point.x(), point.y())
        self._rest.start(REST_MS)

    def keyPressEvent(self, event) -> None:  # noqa: N802
        key = event.key()
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter, Qt.Key.Key_Space):
            self.accept()
        elif key == Qt.Key.Key_Backspace and self.points:
            self.points.pop()
            self.refresh()
        elif key == Qt.Key.Key_Escape:
            self.clear()
        else:
            return
        event.accept()

    def deactivate(self) -> None:
        self.clear()
        super().deactivate()

    # -- actions ------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Predict the object for the current points and show it (cleared when no positive point is left)."""
        self.answer = None
        self.band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
        if not any(label for _, _, label in self.points):
            return
        try:
            self.answer = self.client().predict(**self._request())
        except PluginError as exc:
            self.message.emit(str(exc))
            return
        self.band.setToGeometry(polygon_geometry(self.answer["object"]["geometry"]), None)

    def accept(self) -> None:
        """Append the previewed object to the target layer and start the next one."""
        if self.answer is None:
            self.message.emit("no object to accept: click on one first")
            return
        positives = sum(label for _, _, label in self.points)
        try:
            add_object(self.target(), self._in_target_crs(), positives, len(self.points) - positives,
                       self.raster().name())
        except PluginError as exc:
            self.message.emit(str(exc))
            return
        self.clear()

    def clear(self) -> None:
        self.points, self.answer = [], None
        self.band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)

    # -- engine calls --------------------------------------------------------------------------------
    def _request(self, out_crs: Optional[str] = None) -> dict:
        crs = self.canvas().mapSettings().destinationCrs().authid()
        return {"raster": self._raster_path(), "crs": crs, "out_crs": out_crs or crs,
                "positive": [[x, y] for x, y, label in self.points if label],
                "negative": [[x, y] for x, y, label in self.points if not label], **self.choice()}

    def _in_target_crs(self) -> dict:
        crs = self.target().crs().authid()
        if crs == self.canvas().mapSettings().destinationCrs().authid():
            return self.answer
        return self.client().predict(**self._request(out_crs=crs))

    def _raster_path(self) -> str:
        raster = self.raster()
        if raster is None:
            raise PluginError("choose a raster layer in the PointSAM dock first")
        return raster.source()

    def _prefetch(self) -> None:
        if self._cursor is None or self.raster() is None:
            return
        body = {"raster": self._raster_path(), "point": list(self._cursor),
                "crs": self.canvas().mapSettings().destinationCrs().authid(), **self.choice()}

        def call():
            try:
                self.client().prefetch(**body)
            except PluginError:
                pass  # a cursor off the raster: nothing to prepare

        threading.Thread(target=call, daemon=True).start()
