"""Interactive map tool: click an object, see its polygon, accept it into a polygon layer.

Left click adds a positive point (a green marker); right click or Shift+click a negative one (red). A left
drag draws a box prompt (SAM's box), combined with any clicks. The preview polygon (a rubber band) follows
the prompts. Enter or Space accepts it into the target layer's edit buffer (Ctrl+Z undoes it), Backspace
removes the last prompt, Esc clears.

Nothing here waits for the engine: every engine call (predict, prefetch) runs through
:func:`qgis_plugin.background.in_background`. Prompts given while a prediction is pending are kept; when it
answers, an answer for prompts that have changed since is dropped and the current prompts are predicted
again. An accept while a prediction is pending waits for it. ``state`` tells what the engine is doing
("starting engine…", "segmenting…", "encoding…" while the chip under a resting cursor is encoded ahead of
the click) and, afterwards, what the last answer was.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsGeometry,
    QgsPointXY,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.gui import QgsMapCanvas, QgsMapTool, QgsRubberBand
from qgis.PyQt.QtCore import Qt, QTimer, pyqtSignal
from qgis.PyQt.QtGui import QColor

from .. import palette, settings
from ..background import BackgroundCall, in_background
from ..client import EngineClient
from ..errors import PluginError
from ..layers import add_object, polygon_geometry

REST_MS = 400
DRAG_PX = 6  # a press and release farther apart than this (screen pixels) draw a box, not a click
PREVIEW, POSITIVE, NEGATIVE = (palette.qcolor(c) for c in (palette.PREVIEW, palette.POSITIVE, palette.NEGATIVE))
STARTING, SEGMENTING, ENCODING = "starting engine…", "segmenting…", "encoding…"

Box = Tuple[float, float, float, float]  # xmin, ymin, xmax, ymax in the canvas CRS


class PointSamMapTool(QgsMapTool):
    """Prompts to one object at a time on ``raster()``, accepted into ``target()``; ``client()`` gives the engine
    (called on a worker thread: it may start the engine), ``choice()`` the model and adapter fields of each
    request (the dock's choice), ``starting()`` whether the next call must first start the engine."""

    message = pyqtSignal(str)  # errors and hints for the message bar
    state = pyqtSignal(str)  # what the engine is doing, or what the last answer was, for the message bar

    def __init__(self, canvas: QgsMapCanvas, raster: Callable[[], Optional[QgsRasterLayer]],
                 client: Callable[[], EngineClient], target: Callable[[], QgsVectorLayer],
                 choice: Callable[[], dict] = dict, starting: Callable[[], bool] = settings.engine_starts_on_next_call):
        super().__init__(canvas)
        self.raster, self.client, self.target, self.choice, self.starting = raster, client, target, choice, starting
        self.points: List[Tuple[float, float, int]] = []  # x, y (canvas CRS), 1 positive / 0 negative
        self.boxes: List[Box] = []  # drawn boxes; the last one is the prompt (Backspace brings back the one before)
        self._history: List[str] = []  # "point" or "box", in the order given, for Backspace
        self.answer: Optional[dict] = None  # the prediction shown (canvas CRS)
        self._target_answer: Optional[dict] = None  # the same object in the target layer's CRS
        self._generation = 0  # bumped on every change of the prompts: answers for older ones are stale
        self._shown = 0  # the generation ``answer`` belongs to
        self._call: Optional[BackgroundCall] = None  # the prediction in flight (one at a time)
        self._call_state = ""
        self._prefetching: Optional[BackgroundCall] = None
        self._accept_wanted = False
        self._told_about_saving = False
        self.last_result = ""
        self.band = self._band(QgsWkbTypes.GeometryType.PolygonGeometry, PREVIEW,
                               palette.qcolor(palette.PREVIEW, 70), 2)
        self.box_band = self._band(QgsWkbTypes.GeometryType.PolygonGeometry, palette.qcolor(palette.BOX_PROMPT),
                                   palette.qcolor(palette.BOX_PROMPT, 25), 2)
        self.markers = {label: self._band(QgsWkbTypes.GeometryType.PointGeometry, QColor(255, 255, 255), color, 2)
                        for label, color in ((1, POSITIVE), (0, NEGATIVE))}
        for marker in self.markers.values():
            marker.setIcon(QgsRubberBand.IconType.ICON_CIRCLE)
            marker.setIconSize(15)
        self._rest = QTimer(self)
        self._rest.setSingleShot(True)
        self._rest.timeout.connect(self._prefetch)
        self._cursor: Optional[Tuple[float, float]] = None
        self._press = None  # (screen pos, map point) of a left press that may become a drag
        self._dragging = False
        self.setCursor(Qt.CursorShape.CrossCursor)

    def _band(self, kind, stroke: QColor, fill: QColor, width: int) -> QgsRubberBand:
        band = QgsRubberBand(self.canvas(), kind)
        band.setStrokeColor(stroke)
        band.setFillColor(fill)
        band.setWidth(width)
        return band

    # -- Qt events ----------------------------------------------------------------------------------
    def canvasPressEvent(self, event) -> None:  # noqa: N802
        if event.button() == Qt.MouseButton.LeftButton:
            self._press, self._dragging = (event.pos(), event.mapPoint()), False

    def canvasMoveEvent(self, event) -> None:  # noqa: N802
        point = event.mapPoint()
        self._cursor = (point.x(), point.y())
        if self._press is not None and event.buttons() & Qt.MouseButton.LeftButton:
            moved = event.pos() - self._press[0]
            self._dragging = self._dragging or abs(moved.x()) + abs(moved.y()) > DRAG_PX
            if self._dragging:
                self.box_band.setToGeometry(_box_geometry(_box(self._press[1], point)), None)
                return
        self._rest.start(REST_MS)

    def canvasReleaseEvent(self, event) -> None:  # noqa: N802
        press, dragging = self._press, self._dragging
        self._press, self._dragging = None, False
        if event.button() not in (Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton):
            return  # the middle button pans the canvas
        if dragging and event.button() == Qt.MouseButton.LeftButton:
            self.add_box(_box(press[1], event.mapPoint()))
            return
        point = event.mapPoint()
        negative = (event.button() == Qt.MouseButton.RightButton
                    or bool(event.modifiers() & Qt.KeyboardModifier.ShiftModifier))
        self.add_point(point.x(), point.y(), 0 if negative else 1)

    def keyPressEvent(self, event) -> None:  # noqa: N802
        key = event.key()
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter, Qt.Key.Key_Space):
            self.accept()
        elif key == Qt.Key.Key_Backspace and self._history:
            self.undo_last()
        elif key == Qt.Key.Key_Escape:
            self.clear()
        else:
            return
        event.accept()

    def deactivate(self) -> None:
        self._rest.stop()
        self.clear()
        super().deactivate()

    # -- prompts ------------------------------------------------------------------------------------
    def add_point(self, x: float, y: float, label: int) -> None:
        """Add a click (1 positive, 0 negative) in the canvas CRS and predict again."""
        self.points.append((x, y, label))
        self._history.append("point")
        self.refresh()

    def add_box(self, box: Box) -> None:
        """Make ``box`` (canvas CRS) the box prompt and predict again."""
        self.boxes.append(box)
        self._history.append("box")
        self.refresh()

    def undo_last(self) -> None:
        """Remove the last prompt given (a click, or the box, bringing back the box before it)."""
        (self.points if self._history.pop() == "point" else self.boxes).pop()
        self.refresh()

    def refresh(self) -> None:
        """The prompts changed: show them, drop the preview when no prompt is left, predict when none is pending."""
        self._generation += 1
        self._target_answer = None
        self._draw_prompts()
        if not self._has_prompt():
            self.answer = None
            self.band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
        self._advance()

    def accept(self) -> None:
        """Add the object to the target layer and start the next one; waits (queued) for a pending prediction."""
        if self.answer is None and (self._call is None or not self._has_prompt()):
            self.message.emit("no object to accept: click on one first")
            return
        self._accept_wanted = True
        self._advance()

    def clear(self) -> None:
        """Forget the prompts and the preview (an answer still pending is dropped when it comes); the state line
        stops offering Enter for the object that is gone."""
        self.points, self.boxes, self._history, self.answer = [], [], [], None
        self._accept_wanted = False
        self.last_result = ""
        self.box_band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
        self.refresh()
        self._show_state()

    def busy(self) -> bool:
        """Whether a prediction is in flight."""
        return self._call is not None

    def _has_prompt(self) -> bool:
        return bool(self.boxes) or any(label for _, _, label in self.points)

    def _draw_prompts(self) -> None:
        for label, marker in self.markers.items():
            marker.reset(QgsWkbTypes.GeometryType.PointGeometry)
            for x, y, point_label in self.points:
                if point_label == label:
                    marker.addPoint(QgsPointXY(x, y), True)
        if self.boxes:
            self.box_band.setToGeometry(_box_geometry(self.boxes[-1]), None)
        else:
            self.box_band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)

    # -- the engine, one call at a time, never waited for -------------------------------------------------
    def _advance(self) -> None:
        """Start what comes next: a prediction for changed prompts, else the queued accept."""
        if self._call is not None:
            return  # its answer calls _advance again
        if self._has_prompt() and self._shown != self._generation:
            self._predict()
        elif self._accept_wanted:
            self._accept_now()

    def _accept_now(self) -> None:
        if self.answer is None:
            self._accept_wanted = False
            self.message.emit("no object to accept: click on one first")
            return
        try:
            target = self.target()
            if self._target_answer is None and not _same_crs(target.crs(), self._canvas_crs()):
                self._predict(out_crs=target.crs().authid())
                return
            self._accept_wanted = False
            positives = sum(label for _, _, label in self.points)
            add_object(target, self._target_answer or self.answer, positives, len(self.points) - positives,
                       self.raster().name() if self.raster() is not None else "")
        except PluginError as exc:
            self._accept_wanted = False
            self.message.emit(str(exc))
            return
        told, self._told_about_saving = self._told_about_saving, True
        self.clear()
        # the first time, how to keep the objects; a message of its own would queue behind the state line
        self.last_result = (f"PointSAM: object added to {target.name()}; click the next one" if told
                            else f"PointSAM: {SAVING_NOTE}")
        self._show_state()

    def _predict(self, out_crs: Optional[str] = None) -> None:
        try:
            body = self._request(out_crs)
        except PluginError as exc:
            self._accept_wanted = False
            self._shown = self._generation  # nothing to retry until the prompts change
            self.message.emit(str(exc))
            return
        generation, client = self._generation, self.client
        self._call_state = STARTING if self.starting() else SEGMENTING
        self._call = in_background("PointSAM: segmenting the clicked object",
                                   lambda task: client().predict(**body),
                                   lambda task: self._answered(task, generation, out_crs))
        self._show_state()

    def _answered(self, task: BackgroundCall, generation: int, out_crs: Optional[str]) -> None:
        self._call = None
        if generation != self._generation:
            pass  # stale: the prompts changed while it ran; _advance predicts the current ones
        elif task.error is not None:
            self._accept_wanted = False
            self.message.emit(task.error)
            if out_crs is None:
                self._shown, self.answer = generation, None
                self.band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
        elif out_crs is not None:
            self._target_answer = task.value
        else:
            self._shown, self.answer = generation, task.value
            self.band.setToGeometry(polygon_geometry(self.answer["object"]["geometry"]), None)
            self.last_result = _describe(self.answer)
        self._show_state()
        self._advance()

    def _request(self, out_crs: Optional[str] = None) -> dict:
        crs = self._canvas_crs().authid()
        body = {"raster": self._raster_path(), "crs": crs, "out_crs": out_crs or crs,
                "positive": [[x, y] for x, y, label in self.points if label],
                "negative": [[x, y] for x, y, label in self.points if not label], **self.choice()}
        if self.boxes:
            body["box"] = list(self.boxes[-1])
        return body

    def _canvas_crs(self) -> QgsCoordinateReferenceSystem:
        return self.canvas().mapSettings().destinationCrs()

    def _raster_path(self) -> str:
        raster = self.raster()
        if raster is None:
            raise PluginError("choose a raster layer in the PointSAM dock first")
        return raster.source()

    def _prefetch(self) -> None:
        if self._cursor is None or self._call is not None or self._prefetching is not None or self.raster() is None:
            return
        body = {"raster": self._raster_path(), "point": list(self._cursor), "crs": self._canvas_crs().authid(),
                **self.choice()}
        client = self.client
        self._call_state = STARTING if self.starting() else ENCODING
        # a cursor off the raster makes the engine refuse: nothing to prepare, nothing to say
        self._prefetching = in_background("PointSAM: encoding the chip under the cursor",
                                          lambda task: client().prefetch(**body), self._prefetched)
        self._show_state()

    def _prefetched(self, task: BackgroundCall) -> None:
        self._prefetching = None
        self._show_state()

    def _show_state(self) -> None:
        busy = self._call is not None or self._prefetching is not None
        self.setCursor(Qt.CursorShape.BusyCursor if self._call is not None else Qt.CursorShape.CrossCursor)
        self.state.emit(self._call_state if busy else self.last_result)


def _box(a: QgsPointXY, b: QgsPointXY) -> Box:
    return min(a.x(), b.x()), min(a.y(), b.y()), max(a.x(), b.x()), max(a.y(), b.y())


def _box_geometry(box: Box) -> QgsGeometry:
    return QgsGeometry.fromRect(QgsRectangle(*box))


def _same_crs(a: QgsCoordinateReferenceSystem, b: QgsCoordinateReferenceSystem) -> bool:
    return a == b or (bool(a.authid()) and a.authid() == b.authid())


# the state line after the first accepted object: how to keep the objects (the digitize action's tooltip says where
# Save Layer Edits is; the target layer is named beside the action), short enough for one line of the message bar
SAVING_NOTE = "added; Save Layer Edits keeps it, Ctrl+Z undoes"


def _describe(answer: dict) -> str:
    props = answer["object"]["properties"]
    # short enough for one line of the message bar between the docks of a 1280-px window; what to do next first
    return (f"PointSAM: {props['area_m2']:,.0f} m², score {props['score']:.2f}; Enter accepts, Esc clears "
            f"({answer.get('seconds', 0):.1f} s)")
