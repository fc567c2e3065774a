"""The "PointSAM" dock: choose a raster and a point layer, run the engine as a background task, add the results.

Nothing here waits on the engine on QGIS's GUI thread: Refresh (the model list), Run, Download and the
model list after a run go through :func:`~qgis_plugin.background.in_background`, and the state line says
what is happening ("starting engine…", then the job's stage). The model list shows the models the engine
can load and the official ones it can download (Download follows the engine's pull job); only adapters
trained for the chosen model are offered, also those "Fine-tune from points" wrote anywhere. Run never
replaces a layer of an existing GeoPackage without asking, and other layers of the file are kept by the
engine; results land in a group of their own above the raster ("PointSAM: raster (2)" for a second run).
Without an Output, results go to the project's folder when the project is saved, else to a temporary
folder removed when the project is closed.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Callable, Dict, List, Optional

from qgis.core import QgsMapLayerProxyModel, QgsProject
from qgis.gui import QgsDockWidget, QgsDoubleSpinBox, QgsFieldComboBox, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .. import catalog, settings
from ..background import BackgroundCall, in_background
from ..client import EngineClient
from ..defaults import SEGMENT
from ..errors import PluginError
from ..layers import skipped_reasons, write_layer
from ..messages import OUTLINES, in_plugin_terms, parse_bands, skipped_summary, stage_text
from .results import RUN_LAYERS, add_result_layers, existing_layers

STARTING = "starting engine…"
KEY_REGULARIZE = "pointsam/regularize"  # the dock's last Outlines choice


def _follow(task: BackgroundCall, client: EngineClient, job: dict) -> dict:
    """Follow an engine job from a worker thread: its stage and progress on ``task``, cancelled with it."""
    def report(fraction: float, stage: str) -> None:
        task.stage = stage
        task.setProgress(100 * fraction)

    return client.follow(job, report, task.isCanceled)


class PointSamDock(QgsDockWidget):
    """Raster, points, fields and options in; instances and boxes out, as layers.

    ``client`` gives a client of a healthy engine (it may start the engine: it is only called off the GUI
    thread); ``notify`` shows a line in QGIS's message bar; ``confirm`` asks a yes/no question (a QMessageBox
    unless given); ``engine_starting`` tells whether the next call starts the engine.
    """

    def __init__(self, client: Callable[[], EngineClient], parent=None,
                 notify: Callable[[str], None] = lambda text: None, confirm: Optional[Callable[[str], bool]] = None,
                 engine_starting: Callable[[], bool] = settings.engine_starts_on_next_call):
        super().__init__("PointSAM", parent)
        self.setObjectName("PointSamDock")
        self.client, self.notify, self.engine_starting = client, notify, engine_starting
        self.confirm = confirm or self._ask
        self.task: Optional[BackgroundCall] = None  # the run or download the progress bar follows
        self.listing: Optional[BackgroundCall] = None
        self.added: list = []
        self.copies: Dict[str, str] = {}  # the run's copies of the analyst's layers: path -> layer name
        self.answer: dict = catalog.last_models() or {}
        self.adapters: List[dict] = catalog.adapters(self.answer)
        self._select_after: Optional[str] = None
        self._temporary: Optional[str] = None  # the folder of temporary outputs, made on first use
        self._build()
        self.ticker = QTimer(self)
        self.ticker.setInterval(250)
        self.ticker.timeout.connect(self._show_stage)
        catalog.changes.adapter_trained.connect(self._adapter_trained)
        QgsProject.instance().cleared.connect(self.drop_temporary_outputs)

    # -- layout -------------------------------------------------------------------------------------
    def _build(self) -> None:
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
        self.model, self.adapter = QComboBox(), QComboBox()
        self.calibration = QCheckBox("Negative prompt calibration")
        self.calibration.setChecked(SEGMENT["calibration"])
        self.sar_db = QCheckBox("SAR: stretch in dB")
        self.bands = QLineEdit()
        self.bands.setPlaceholderText("e.g. 3,2,1 or 1 (default: RGB)")
        self.min_area = QgsDoubleSpinBox()
        self.min_area.setRange(0, 1e9)
        self.simplify = QgsDoubleSpinBox()
        self.simplify.setRange(0, 1e6)
        self.simplify.setSpecialValueText("one pixel")
        self.regularize = QComboBox()
        for value, label in OUTLINES.items():
            self.regularize.addItem(label, value)
        self.regularize.setCurrentIndex(max(self.regularize.findData(settings.value(KEY_REGULARIZE) or "none"), 0))
        self.regularize.currentIndexChanged.connect(
            lambda _: settings.set_value(KEY_REGULARIZE, self.regularize.currentData()))
        self.output = QgsFileWidget()
        self.output.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
        self.output.setFilter("GeoPackage (*.gpkg)")
        self.output.setConfirmOverwrite(False)  # Run asks about the layers it would replace, not the file
        self.output.lineEdit().setPlaceholderText("[temporary file, or the project's folder]")
        for label, widget in (("Raster", self.raster), ("Points", self.points), ("", self.selected_only),
                              *[(field_labels[k], c) for k, c in self.fields.items()],
                              ("Model", self.model), ("", self._model_buttons()), ("Adapter", self.adapter),
                              ("", self.calibration),
                              ("", self.sar_db), ("Bands", self.bands),
                              ("Minimum area (m²)", self.min_area), ("Simplify (m)", self.simplify),
                              ("Regularize", self.regularize),
                              ("Output", self.output)):
            form.addRow(label, widget)
        self.run_button, self.cancel_button = QPushButton("Run"), QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.state = QLabel("")
        self.progress = QProgressBar()
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        layout = QVBoxLayout()
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.state)
        layout.addWidget(self.progress)
        layout.addWidget(self.log)
        body.setLayout(layout)
        self.setWidget(body)
        self._fill_models(self.answer)

    def _model_buttons(self) -> QHBoxLayout:
        """Refresh and Download under the model list; the adapter list follows the chosen model."""
        self.model.currentIndexChanged.connect(self._model_chosen)
        self.refresh_button = QToolButton()
        self.refresh_button.setText("Refresh")
        self.refresh_button.setToolTip("Ask the engine for its models and adapters (starts it when needed)")
        self.refresh_button.clicked.connect(self.load_models)
        self.download_button = QToolButton()
        self.download_button.setText("Download")
        self.download_button.setToolTip("Download the chosen official SAM checkpoint; its sha256 is checked")
        self.download_button.clicked.connect(self.download)
        row = QHBoxLayout()
        row.addWidget(self.refresh_button)
        row.addWidget(self.download_button)
        row.addStretch(1)
        return row

    # -- talking to the analyst -----------------------------------------------------------------------
    def say(self, line: str) -> None:
        self.log.appendPlainText(line)

    def fail(self, message: str) -> None:
        """An error: one line, in the dock's words, in the log and in QGIS's message bar."""
        message = in_plugin_terms(message, self.copies)
        self.say(f"error: {message}")
        self.notify(message)

    def _ask(self, question: str) -> bool:
        answer = QMessageBox.question(self, "PointSAM", question,
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def _show_stage(self) -> None:
        task = self.task or self.listing
        if task is not None and task.stage:
            self.state.setText(stage_text(task.stage))

    def _begin(self, task: BackgroundCall) -> None:
        """Show a started call: "starting engine…" until the engine is up, then its stage."""
        task.stage = STARTING if self.engine_starting() else "waiting for the engine"
        self._show_stage()
        self.ticker.start()

    # -- models and adapters -------------------------------------------------------------------------
    def load_models(self) -> None:
        """Ask the engine for its models and adapters in the background; the lists follow its answer."""
        if self.listing is not None:
            return
        self.refresh_button.setEnabled(False)
        self.listing = in_background("PointSAM: list models", lambda task: self.client().models(), self._models_listed)
        self._begin(self.listing)

    def _models_listed(self, task: BackgroundCall) -> None:
        self.listing = None
        self.refresh_button.setEnabled(True)
        self._settle_state()
        if task.error:
            self.fail(task.error)
            return
        catalog.remember_models(task.value)
        self._fill_models(task.value)

    def _fill_models(self, answer: dict) -> None:
        """The engine's default first, then the models it can load, then the official ones it can download."""
        self.answer = answer
        self.adapters = catalog.adapters(answer)
        chosen = self._select_after or self.model_name()
        self._select_after = None
        self.model.blockSignals(True)
        self.model.clear()
        loaded = answer.get("loaded")
        if loaded:
            self.model.addItem(f"engine default: {loaded['label']}", {"sha256": loaded["sha256"], "installed": True})
        else:
            self.model.addItem("engine default (Refresh lists the engine's models)", {"installed": True})
        official = {entry["name"]: entry for entry in answer.get("catalog", [])}
        for info in answer.get("available", []):
            entry = official.get(info["name"], {})
            self.model.addItem(catalog.model_item_text(info["name"], entry.get("size"), True, entry.get("sha256_state", "")),
                               {"name": info["name"], "model": info["path"], "sha256": info["sha256"], "installed": True})
        listed = {info["name"] for info in answer.get("available", [])}
        for entry in answer.get("catalog", []):
            if entry["name"] in listed:
                continue
            installed = bool(entry.get("installed") and entry.get("path"))
            text = catalog.model_item_text(entry["name"], entry.get("size"), installed, entry.get("sha256_state", ""))
            self.model.addItem(text,
                               {"name": entry["name"], "model": entry.get("path"), "sha256": entry.get("sha256"),
                                "installed": installed})
        names = [(self.model.itemData(i) or {}).get("name") for i in range(self.model.count())]
        if chosen in names:
            self.model.setCurrentIndex(names.index(chosen))
        self.model.blockSignals(False)
        self._model_chosen()

    def model_name(self) -> Optional[str]:
        """The chosen model's name (None: the engine's default)."""
        return (self.model.currentData() or {}).get("name")

    def _model_chosen(self) -> None:
        info = self.model.currentData() or {}
        self.download_button.setEnabled(not info.get("installed", True) and self.task is None)
        self._offer_adapters()

    def _offer_adapters(self) -> None:
        """The adapters trained for the chosen model (those of another base would be refused)."""
        sha256 = (self.model.currentData() or {}).get("sha256")
        chosen = self.adapter.currentData()
        self.adapter.clear()
        self.adapter.addItem("(none)", None)
        for info in self.adapters:
            if info["base"]["sha256"] == sha256:
                self.adapter.addItem(info["name"], info["path"])
        index = self.adapter.findData(chosen)
        self.adapter.setCurrentIndex(max(index, 0))

    def _adapter_trained(self, header: dict, kept_step: int) -> None:
        """A fine-tuning run ended: its adapter joins the list; an adapter that changes nothing is said plainly."""
        self.adapters = catalog.adapters(self.answer)
        self._offer_adapters()
        self.say(f"adapter {header['name']} trained for {header['base']['name']}: {header['path']}")
        if kept_step == 0:
            self.fail(f"fine-tuning kept step 0: adapter {header['name']} changes nothing (the base model scored best "
                      "on the held-out clicks); segment with the base model, or train longer or with more clicks")

    def choice(self) -> dict:
        """The chosen model and adapter as request fields (none: the engine's default model)."""
        body = {}
        info = self.model.currentData() or {}
        model = info.get("model") or (info.get("name") if not info.get("installed", True) else None)
        if model:
            body["model"] = model
        if self.adapter.currentData():
            body["adapter"] = self.adapter.currentData()
        return body

    def download(self) -> None:
        """Download the chosen official checkpoint (the engine's pull job), then list the models again."""
        name = self.model_name()
        if not name or self.task is not None:
            return
        self.say(f"downloading {name} ...")
        self._select_after = name
        self._start(f"PointSAM: download {name}", lambda client: client.pull(name), self._downloaded)

    def _downloaded(self, task: BackgroundCall) -> None:
        self._finish_task()
        if task.error:
            self._select_after = None
            self.fail(task.error)
            return
        self.say(f"{task.value['name']} downloaded, sha256 verified: {task.value['path']}")
        self.load_models()

    # -- running -------------------------------------------------------------------------------------
    def request(self, folder: str) -> dict:
        """The segment job for the chosen layers and options (points exported to ``folder``)."""
        raster, points = self.raster.currentLayer(), self.points.currentLayer()
        if raster is None or points is None:
            raise PluginError("choose a raster layer and a point layer")
        bands = parse_bands(self.bands.text())
        info = self.model.currentData() or {}
        if not info.get("installed", True):
            raise PluginError(f"{info['name']} is not downloaded yet; press Download beside Model, or choose another model")
        body = {"raster": raster.source(), "output": self.output.filePath() or self.temporary_output(raster.name()),
                "calibration": self.calibration.isChecked(), "sar_db": self.sar_db.isChecked(),
                "min_area": self.min_area.value()}
        for key, combo in self.fields.items():
            if combo.currentField():
                body[key] = combo.currentField()
        if bands:
            body["bands"] = bands
        if self.simplify.value() > 0:
            body["simplify"] = self.simplify.value()
        if self.regularize.currentData() != "none":
            body["regularize"] = self.regularize.currentData()
        body["points"] = write_layer(points, os.path.join(folder, "points.gpkg"), "points", self.selected_only.isChecked())
        self.copies = {body["points"]: points.name()}
        return {**body, **self.choice()}

    def temporary_output(self, raster_name: str) -> str:
        """A new GeoPackage for a run without Output: in the project's folder when the project is saved, else in
        a folder removed when the project is closed."""
        folder = QgsProject.instance().absolutePath()
        if not folder:
            if self._temporary is None or not os.path.isdir(self._temporary):
                self._temporary = tempfile.mkdtemp(prefix="pointsam-outputs-")
            folder = self._temporary
        stem = "pointsam_" + (re.sub(r"[^\w.-]+", "_", raster_name).strip("_") or "result")
        path, n = os.path.join(folder, f"{stem}.gpkg"), 1
        while os.path.exists(path):
            n += 1
            path = os.path.join(folder, f"{stem}_{n}.gpkg")
        return path

    def may_replace(self, output: str) -> Optional[bool]:
        """The run's ``overwrite``: False for a new file or one without the run's layers; True when the user
        confirmed replacing those layers; None when they said no (nothing runs)."""
        if not os.path.exists(output):
            return False
        clashes = [name for name in existing_layers(output) if name in RUN_LAYERS]
        if not clashes:
            return False
        if self.confirm(f"{output} already holds the layers {', '.join(clashes)}. Replace them with this run's "
                        "results? Its other layers are kept."):
            return True
        return None

    def busy(self) -> bool:
        return self.task is not None

    def run(self) -> None:
        if self.busy():
            return
        folder = tempfile.mkdtemp(prefix="pointsam-dock-")
        try:
            body = self.request(folder)
            overwrite = self.may_replace(body["output"])
        except PluginError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            self.fail(str(exc))
            return
        if overwrite is None:
            shutil.rmtree(folder, ignore_errors=True)
            self.say(f"not run: {body['output']} keeps its layers; choose another Output to write elsewhere")
            return
        body["overwrite"] = overwrite
        raster = self.raster.currentLayer()
        self.say(f"segmenting {self.points.currentLayer().name()} over {raster.name()} ...")
        self._start("PointSAM: segment points", lambda client: client.submit("segment", **body),
                    lambda task: self._run_finished(task, raster, folder))

    def _start(self, description: str, submit: Callable[[EngineClient], dict],
               done: Callable[[BackgroundCall], None]) -> None:
        """Submit an engine job off the GUI thread (starting the engine when needed) and follow it."""
        def work(task: BackgroundCall) -> dict:
            client = self.client()
            task.stage = "queued"
            return _follow(task, client, submit(client))

        self.run_button.setEnabled(False)
        self.download_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.task = in_background(description, work, done)
        self.task.progressChanged.connect(lambda value: self.progress.setValue(int(value)))
        self._begin(self.task)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _finish_task(self) -> None:
        self.task = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self._model_chosen()
        self._settle_state()

    def _settle_state(self) -> None:
        if self.task is None and self.listing is None:
            self.ticker.stop()
            self.state.setText("")

    def _run_finished(self, task: BackgroundCall, raster, folder: str) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        self._finish_task()
        if task.error:
            self.fail(task.error)
            return
        output, report = task.value["output"], task.value["report"]
        try:
            self.added = add_result_layers(output, raster)
        except PluginError as exc:
            self.fail(str(exc))
            return
        self.say(f"{report['instances']} instances, {report['encoder_passes']} encoder passes -> {output}")
        skipped = skipped_summary(skipped_reasons(output))
        if skipped:
            self.say(skipped)
        if self.model.count() == 1:  # the engine is up now: offer its models without a Refresh
            self.load_models()

    # -- temporary outputs ---------------------------------------------------------------------------
    def drop_temporary_outputs(self) -> None:
        """Remove the temporary outputs no layer of the project reads any more (all of them once the project is
        closed); called when the project is cleared and when the plugin unloads."""
        folder = self._temporary
        if folder is None or not os.path.isdir(folder):
            return
        used = {os.path.realpath(layer.source().split("|")[0]) for layer in QgsProject.instance().mapLayers().values()}
        for name in os.listdir(folder):
            gpkg = os.path.realpath(os.path.join(folder, name.split(".gpkg")[0] + ".gpkg"))  # with its -wal, -shm
            if gpkg not in used:
                os.remove(os.path.join(folder, name))
        if not os.listdir(folder):
            os.rmdir(folder)
            self._temporary = None
