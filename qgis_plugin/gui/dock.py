"""The "PointSAM" dock: choose a raster and a point layer, run the engine as a background task, add the results.

Run starts a :class:`SegmentTask` (a QgsTask that follows the engine job: progress bar, Cancel); the
instances and oriented boxes are added as styled layers in a group above the raster.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable, Optional

from qgis.core import (QgsApplication, QgsFillSymbol, QgsMapLayerProxyModel, QgsProject,
                       QgsTask, QgsVectorLayer)
from qgis.gui import QgsDockWidget, QgsDoubleSpinBox, QgsFieldComboBox, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtWidgets import (QCheckBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit, QProgressBar,
                                 QPushButton, QVBoxLayout, QWidget)

from ..client import EngineClient
from ..errors import PluginError
from ..layers import write_points

STYLES = {"instances": {"color": "255,200,0,70", "outline_color": "255,200,0", "outline_width": "0.5"},
          "boxes": {"color": "0,0,0,0", "outline_color": "0,220,255", "outline_width": "0.4"}}


class SegmentTask(QgsTask):
    """Submits a segment job and follows it; never raises in ``run()`` (QGIS's rule), reports in ``finished()``."""

    def __init__(self, client: Callable[[], EngineClient], body: dict, done: Callable[["SegmentTask"], None]):
        super().__init__("PointSAM: segment points", QgsTask.CanCancel)
        self.client, self.body, self.done = client, body, done
        self.result: Optional[dict] = None
        self.error: Optional[str] = None

    def run(self) -> bool:
        try:
            client = self.client()
            self.result = client.follow(client.submit("segment", **self.body),
                                        lambda fraction, stage: self.setProgress(100 * fraction), self.isCanceled)
            return True
        except PluginError as exc:
            self.error = str(exc)
            return False

    def finished(self, ok: bool) -> None:
        self.done(self)


class PointSamDock(QgsDockWidget):
    """Raster, points, fields and options in; instances and boxes out, as layers."""

    def __init__(self, client: Callable[[], EngineClient], parent=None,
                 notify: Callable[[str], None] = lambda text: None):
        super().__init__("PointSAM", parent)
        self.setObjectName("PointSamDock")
        self.client, self.notify = client, notify
        self.task: Optional[SegmentTask] = None
        self.added: list = []
        body = QWidget()
        form = QFormLayout()
        self.raster = QgsMapLayerComboBox()
        self.raster.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.points = QgsMapLayerComboBox()
        self.points.setFilters(QgsMapLayerProxyModel.PointLayer)
        self.selected_only = QCheckBox("Selected features only")
        self.fields, field_labels = {}, {}
        for key, label in (("instance_field", "Instance field"), ("label_field", "Label field"), ("class_field", "Class field")):
            field_labels[key] = label
            combo = QgsFieldComboBox()
            combo.setAllowEmptyFieldName(True)
            self.points.layerChanged.connect(combo.setLayer)
            self.fields[key] = combo
        self.model = QLabel("engine not started")
        self.calibration = QCheckBox("Negative prompt calibration")
        self.calibration.setChecked(True)
        self.sar_db = QCheckBox("SAR: stretch in dB")
        self.bands = QLineEdit()
        self.bands.setPlaceholderText("e.g. 3,2,1 or 1 (default: RGB)")
        self.min_area = QgsDoubleSpinBox()
        self.min_area.setRange(0, 1e9)
        self.simplify = QgsDoubleSpinBox()
        self.simplify.setRange(0, 1e6)
        self.simplify.setSpecialValueText("one pixel")
        self.output = QgsFileWidget()
        self.output.setStorageMode(QgsFileWidget.SaveFile)
        self.output.setFilter("GeoPackage (*.gpkg)")
        self.output.lineEdit().setPlaceholderText("[temporary file]")
        for label, widget in (("Raster", self.raster), ("Points", self.points), ("", self.selected_only),
                              *[(field_labels[k], c) for k, c in self.fields.items()],
                              ("Model", self.model), ("", self.calibration), ("", self.sar_db), ("Bands", self.bands),
                              ("Minimum area (map units²)", self.min_area), ("Simplify (map units)", self.simplify),
                              ("Output", self.output)):
            form.addRow(label, widget)
        self.run_button, self.cancel_button = QPushButton("Run"), QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.progress = QProgressBar()
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        layout = QVBoxLayout()
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.log)
        body.setLayout(layout)
        self.setWidget(body)

    def say(self, line: str) -> None:
        self.log.appendPlainText(line)

    def fail(self, message: str) -> None:
        """An error: one line in the log and in QGIS's message bar."""
        self.say(f"error: {message}")
        self.notify(message)

    def show_model(self) -> None:
        """The engine's loaded model (``/v1/models``)."""
        try:
            loaded = self.client().models()["loaded"]
        except PluginError as exc:
            self.fail(str(exc))
            return
        self.model.setText(loaded["label"])

    def request(self, folder: str) -> dict:
        """The segment job for the chosen layers and options (points exported to ``folder``)."""
        raster, points = self.raster.currentLayer(), self.points.currentLayer()
        if raster is None or points is None:
            raise PluginError("choose a raster layer and a point layer")
        body = {"raster": raster.source(), "points": write_points(points, os.path.join(folder, "points.gpkg"),
                                                                  self.selected_only.isChecked()),
                "output": self.output.filePath() or os.path.join(folder, "pointsam.gpkg"), "overwrite": True,
                "calibration": self.calibration.isChecked(), "sar_db": self.sar_db.isChecked(),
                "min_area": self.min_area.value()}
        for key, combo in self.fields.items():
            if combo.currentField():
                body[key] = combo.currentField()
        if self.bands.text().strip():
            body["bands"] = [int(b) for b in self.bands.text().split(",")]
        if self.simplify.value() > 0:
            body["simplify"] = self.simplify.value()
        return body

    def run(self) -> None:
        folder = tempfile.mkdtemp(prefix="pointsam-dock-")
        try:
            body = self.request(folder)
        except (PluginError, ValueError) as exc:
            self.fail(str(exc))
            return
        self.say(f"segmenting {self.points.currentLayer().name()} over {self.raster.currentLayer().name()} ...")
        self.task = SegmentTask(self.client, body, self._finished)
        self.task.progressChanged.connect(lambda value: self.progress.setValue(int(value)))
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        QgsApplication.taskManager().addTask(self.task)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _finished(self, task: SegmentTask) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if task.result is None:
            self.fail(task.error or "cancelled")
            return
        self.added = add_result_layers(task.result["output"], self.raster.currentLayer())
        report = task.result["report"]
        self.say(f"{report['instances']} instances, {report['skipped']} skipped, "
                 f"{report['encoder_passes']} encoder passes -> {task.result['output']}")


def add_result_layers(gpkg: str, raster) -> list:
    """Instances and oriented boxes as styled layers, in a group right above the raster."""
    root = QgsProject.instance().layerTreeRoot()
    node = root.findLayer(raster.id()) if raster is not None else None
    parent = node.parent() if node is not None else root
    index = parent.children().index(node) if node is not None else 0
    group = parent.insertGroup(index, f"PointSAM: {raster.name() if raster else os.path.basename(gpkg)}")
    layers = []
    for name in ("boxes", "instances"):
        layer = QgsVectorLayer(f"{gpkg}|layername={name}", name, "ogr")
        if not layer.isValid():
            raise PluginError(f"{gpkg} has no layer {name}")
        layer.renderer().setSymbol(QgsFillSymbol.createSimple(STYLES[name]))
        QgsProject.instance().addMapLayer(layer, False)
        group.insertLayer(0, layer)
        layers.append(layer)
    return layers
