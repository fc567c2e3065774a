"""The "PointSAM" dock: choose a raster and a point layer, run the engine as a background task, add the results.

The model and adapter lists come from the engine (``/v1/models``, Refresh); only adapters trained for the
chosen model are offered, and the choice goes with every run and with the digitizing tool's clicks.
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
from qgis.PyQt.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLineEdit, QPlainTextEdit,
                                 QProgressBar, QPushButton, QToolButton, QVBoxLayout, QWidget)

from ..client import EngineClient
from ..errors import PluginError
from ..layers import write_layer

STYLES = {"instances": {"color": "255,200,0,70", "outline_color": "255,200,0", "outline_width": "0.5"},
          "boxes": {"color": "0,0,0,0", "outline_color": "0,220,255", "outline_width": "0.4"}}


class SegmentTask(QgsTask):
    """Submits a segment job and follows it; never raises in ``run()`` (QGIS's rule), reports in ``finished()``."""

    def __init__(self, client: Callable[[], EngineClient], body: dict, done: Callable[["SegmentTask"], None]):
        super().__init__("PointSAM: segment points", QgsTask.Flag.CanCancel)
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
        self.raster.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        self.points = QgsMapLayerComboBox()
        self.points.setFilters(QgsMapLayerProxyModel.Filter.PointLayer)
        self.selected_only = QCheckBox("Selected features only")
        self.fields, field_labels = {}, {}
        for key, label in (("instance_field", "Instance field"), ("label_field", "Label field"), ("class_field", "Class field")):
            field_labels[key] = label
            combo = QgsFieldComboBox()
            combo.setAllowEmptyFieldName(True)
            self.points.layerChanged.connect(combo.setLayer)
            self.fields[key] = combo
        self.model, self.adapter, self.adapters = QComboBox(), QComboBox(), []
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
        self.output.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
        self.output.setFilter("GeoPackage (*.gpkg)")
        self.output.lineEdit().setPlaceholderText("[temporary file]")
        for label, widget in (("Raster", self.raster), ("Points", self.points), ("", self.selected_only),
                              *[(field_labels[k], c) for k, c in self.fields.items()],
                              ("Model", self._model_row()), ("Adapter", self.adapter), ("", self.calibration),
                              ("", self.sar_db), ("Bands", self.bands),
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

    def _model_row(self) -> QHBoxLayout:
        """The model list with its Refresh button; the adapter list follows the chosen model."""
        self.model.addItem("engine default (Refresh lists the engine's models)", {})
        self.adapter.addItem("(none)", None)
        self.model.currentIndexChanged.connect(self._offer_adapters)
        refresh = QToolButton()
        refresh.setText("Refresh")
        refresh.setToolTip("Ask the engine for its models and adapters (starts it when needed)")
        refresh.clicked.connect(self.load_models)
        row = QHBoxLayout()
        row.addWidget(self.model, 1)
        row.addWidget(refresh)
        return row

    def say(self, line: str) -> None:
        self.log.appendPlainText(line)

    def fail(self, message: str) -> None:
        """An error: one line in the log and in QGIS's message bar."""
        self.say(f"error: {message}")
        self.notify(message)

    def load_models(self) -> None:
        """Fill the model list from the engine (``/v1/models``): its default first, then what it has found."""
        try:
            listed = self.client().models()
        except PluginError as exc:
            self.fail(str(exc))
            return
        loaded = listed["loaded"]
        self.adapters = listed["adapters"]
        self.model.blockSignals(True)
        self.model.clear()
        self.model.addItem(f"engine default: {loaded['label']}", {"sha256": loaded["sha256"]})
        for info in listed["available"]:
            self.model.addItem(info["name"], {"model": info["path"], "sha256": info["sha256"]})
        self.model.blockSignals(False)
        self._offer_adapters()

    def _offer_adapters(self) -> None:
        """The adapters trained for the chosen model (those of another base would be refused)."""
        sha256 = (self.model.currentData() or {}).get("sha256")
        self.adapter.clear()
        self.adapter.addItem("(none)", None)
        for info in self.adapters:
            if info["base"]["sha256"] == sha256:
                self.adapter.addItem(info["name"], info["path"])

    def choice(self) -> dict:
        """The chosen model and adapter as request fields (none: the engine's default model)."""
        body = {}
        model = (self.model.currentData() or {}).get("model")
        if model:
            body["model"] = model
        if self.adapter.currentData():
            body["adapter"] = self.adapter.currentData()
        return body

    def request(self, folder: str) -> dict:
        """The segment job for the chosen layers and options (points exported to ``folder``)."""
        raster, points = self.raster.currentLayer(), self.points.currentLayer()
        if raster is None or points is None:
            raise PluginError("choose a raster layer and a point layer")
        body = {"raster": raster.source(), "points": write_layer(points, os.path.join(folder, "points.gpkg"), "points",
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
        return {**body, **self.choice()}

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
        if self.model.count() == 1:  # the engine is up now: offer its models without a Refresh
            self.load_models()
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
