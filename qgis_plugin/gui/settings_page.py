"""Settings > Options > PointSAM: every engine setting the plugin reads, and the "Set up engine…" button.

The page edits the keys :mod:`qgis_plugin.settings` documents (``pointsam/engine_python``, ``engine_args``,
``engine_url``, ``engine_token``, ``engine_connection_file``, ``engine_output_root``, ``engine_precision``),
so no one needs the Advanced Settings editor. An emptied field removes its key. The plugin's engine picks
the change up on its next use.
"""

from __future__ import annotations

import os
from typing import Callable, Dict

from qgis.gui import QgsOptionsPageWidget, QgsOptionsWidgetFactory
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton, QWidget

from .. import settings
from ..defaults import CHOICES

PRECISIONS = {"fp32": "fp32 (exact)", "auto": "auto (the fastest this CPU or GPU runs accurately)",
              "bf16": "bf16 (CPUs with AVX512-BF16 or AMX, GPUs)", "fp16": "fp16 (GPUs)",
              "int8": "int8 (any CPU)", "openvino": "openvino (OpenVINO's CPU runtime; SAM models)"}

TITLE = "PointSAM"


class SettingsPage(QgsOptionsPageWidget):
    """The PointSAM page; ``open_setup`` opens the "Set up engine…" dialog."""

    def __init__(self, parent: QWidget = None, open_setup: Callable[[], None] = lambda: None):
        super().__init__(parent)
        self.fields: Dict[str, QLineEdit] = {key: QLineEdit(settings.value(key)) for key in
                                             (settings.KEY_PYTHON, settings.KEY_ARGS, settings.KEY_URL,
                                              settings.KEY_TOKEN, settings.KEY_CONNECTION_FILE,
                                              settings.KEY_OUTPUT_ROOT)}
        self.fields[settings.KEY_TOKEN].setEchoMode(QLineEdit.EchoMode.Password)
        placeholders = {settings.KEY_PYTHON: "made by Set up engine…, e.g. ~/.pointsam/venv/bin/python",
                        settings.KEY_ARGS: "arguments of pointsam serve, e.g. --adapters-dir /data/adapters",
                        settings.KEY_URL: "an engine already running, e.g. http://gpu-box:8765",
                        settings.KEY_OUTPUT_ROOT: "anywhere you can write; or a folder, e.g. ~/gis"}
        for key, text in placeholders.items():
            self.fields[key].setPlaceholderText(text)
        self.precision = QComboBox()
        for choice in CHOICES["precision"]:
            self.precision.addItem(PRECISIONS.get(choice, choice), choice)
        self.precision.setCurrentIndex(max(self.precision.findData(settings.value(settings.KEY_PRECISION)), 0))
        self.python_state = QLabel()
        self.fields[settings.KEY_PYTHON].textChanged.connect(self._check_python)
        setup = QPushButton("Set up engine…")
        setup.clicked.connect(open_setup)
        form = QFormLayout(self)
        form.addRow(QLabel("The engine the plugin runs itself (in its own Python environment):"))
        form.addRow("Engine Python", _with_browse(self.fields[settings.KEY_PYTHON], self._browse_python))
        form.addRow("", self.python_state)
        form.addRow("Engine arguments", self.fields[settings.KEY_ARGS])
        form.addRow("Outputs only under", _with_browse(self.fields[settings.KEY_OUTPUT_ROOT], self._browse_root))
        form.addRow("Encoder precision", self.precision)
        form.addRow("", setup)
        form.addRow(QLabel("Or an engine already running (these win over the engine Python):"))
        form.addRow("Engine URL", self.fields[settings.KEY_URL])
        form.addRow("Engine token", self.fields[settings.KEY_TOKEN])
        form.addRow("Connection file", _with_browse(self.fields[settings.KEY_CONNECTION_FILE], self._browse_file))
        self._check_python()

    def apply(self) -> None:
        """Store every field (QGIS calls this on OK)."""
        for key, field in self.fields.items():
            settings.set_value(key, field.text())
        settings.set_value(settings.KEY_PRECISION, self.precision.currentData())

    def _check_python(self) -> None:
        path = os.path.expanduser(self.fields[settings.KEY_PYTHON].text().strip())
        problem = path and not os.path.isfile(path)
        self.python_state.setText(f"{path} does not exist: press Set up engine…" if problem else "")

    def _browse_python(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "The engine environment's Python (…/bin/python)")
        if path:
            self.fields[settings.KEY_PYTHON].setText(path)

    def _browse_root(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "The folder the engine's jobs may write under")
        if path:
            self.fields[settings.KEY_OUTPUT_ROOT].setText(path)

    def _browse_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Connection file of pointsam serve", "", "JSON (*.json)")
        if path:
            self.fields[settings.KEY_CONNECTION_FILE].setText(path)


class SettingsPageFactory(QgsOptionsWidgetFactory):
    """Adds the PointSAM page to Settings > Options (registered in ``initGui``, removed in ``unload``)."""

    def __init__(self, open_setup: Callable[[], None]):
        super().__init__(TITLE, QIcon())
        self.open_setup = open_setup

    def createWidget(self, parent: QWidget = None) -> SettingsPage:  # noqa: N802 (QGIS's name)
        return SettingsPage(parent, self.open_setup)


def _with_browse(field: QLineEdit, slot: Callable[[], None]) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(field, 1)
    button = QPushButton("Browse…")
    button.clicked.connect(slot)
    layout.addWidget(button)
    return row
