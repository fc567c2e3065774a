"""The "Set up engine…" dialog: builds the engine's Python environment from the wheel in the plugin zip.

The user picks a Python (the ones found are listed, or Browse) and a folder, presses Install (Repair when the
folder already holds an environment) and follows pip's log and a progress bar; Cancel stops pip. The work is
:func:`qgis_plugin.installer.setup` in a :class:`SetupTask` (a QgsTask: nothing slow on the GUI thread); its log
lines reach the dialog through a Qt signal. On success the interpreter is stored in ``pointsam/engine_python``,
the engine started by the setup becomes the plugin's engine, the dock lists its models (in the background), and
its ``/v1/health`` fills the diagnostics panel, with a Copy button for bug reports.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Callable, List, Optional

from qgis.core import Qgis, QgsApplication, QgsTask
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import (
    QApplication,
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from .. import installer, settings
from ..background import in_background
from ..errors import PluginError


class SetupTask(QgsTask):
    """:func:`installer.setup` on a worker thread; ``line`` and ``stage`` carry its log and stage to the GUI."""

    line = pyqtSignal(str)
    stage = pyqtSignal(str)

    def __init__(self, python: str, target: Path, wheel: Optional[Path], engine_args: List[str]):
        super().__init__("PointSAM: set up the engine", QgsTask.Flag.CanCancel)
        self.python, self.target, self.wheel, self.engine_args = python, target, wheel, engine_args
        self.result: Optional[installer.SetupResult] = None
        self.error: Optional[str] = None
        self.on_finished: Callable[["SetupTask"], None] = lambda task: None

    def run(self) -> bool:
        try:
            self.result = installer.setup(self.python, self.target, self.wheel, log=self.line.emit,
                                          progress=self._progress, cancelled=self.isCanceled,
                                          engine_args=self.engine_args)
            return True
        except PluginError as exc:
            self.error = str(exc)
        except Exception as exc:  # a bug still reaches the user as one line
            self.error = f"{type(exc).__name__}: {exc}"
        return False

    def _progress(self, fraction: float, stage: str) -> None:
        self.setProgress(100 * fraction)
        self.stage.emit(stage)

    def finished(self, ok: bool) -> None:
        if not ok and self.error is None:
            self.error = f"setup cancelled; {installer.RETRY}"
        self.on_finished(self)


class SetupDialog(QDialog):
    """Install or repair the engine's environment; ``target`` and ``wheel`` default to ``~/.pointsam/venv`` and
    the wheel inside the plugin. ``engine_ready`` is emitted once the set-up engine has answered its health check
    (the plugin then refreshes the dock's model list)."""

    engine_ready = pyqtSignal()

    def __init__(self, parent: Optional[QWidget] = None, target: Optional[Path] = None, wheel: Optional[Path] = None):
        super().__init__(parent)
        self.setWindowTitle("PointSAM: Set up engine")
        self.wheel = wheel
        self.task: Optional[SetupTask] = None
        self.python = QComboBox()
        self.python.setEditable(True)
        self.python.setMinimumWidth(380)
        self.skipped = QLabel()
        self.skipped.setWordWrap(True)
        self.skipped.setStyleSheet("color: grey")
        self.target = QLineEdit(str(target or installer.DEFAULT_TARGET))
        self.target.textChanged.connect(self._name_button)
        self.install_button = QPushButton("Install")
        self.install_button.clicked.connect(self.install)
        self.cancel_button = QPushButton("Close")
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.stage = QLabel("")
        self.stage.setWordWrap(True)  # pip's long wheel names must not widen the dialog past the screen
        self.stage.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(5000)
        self.log.setPlaceholderText("pip's output appears here")
        self.diagnostics = QPlainTextEdit()
        self.diagnostics.setReadOnly(True)
        self.diagnostics.setMaximumHeight(130)
        self.diagnostics.setPlaceholderText("the engine's /v1/health, once it runs")
        copy = QPushButton("Copy")
        copy.setToolTip("copy the diagnostics, e.g. into a bug report")
        copy.clicked.connect(lambda: QApplication.clipboard().setText(self.diagnostics.toPlainText()))
        self._lay_out(copy)
        self._name_button()
        self.python.lineEdit().setPlaceholderText("looking for Python 3.10+ …")
        self.finding = in_background("PointSAM: look for Python", lambda task: installer.find_pythons(),
                                     self._show_pythons)

    def _lay_out(self, copy: QPushButton) -> None:
        form = QFormLayout()
        form.addRow("Python (3.10+)", _row(self.python, self._browse_button(self._browse_python)))
        form.addRow("", self.skipped)
        form.addRow("Environment folder", _row(self.target, self._browse_button(self._browse_target)))
        buttons = QHBoxLayout()
        buttons.addWidget(self.install_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.progress, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.stage)
        layout.addWidget(QLabel("pip log"))
        layout.addWidget(self.log, 1)
        diagnostics = QHBoxLayout()
        diagnostics.addWidget(QLabel("Diagnostics"))
        diagnostics.addStretch(1)
        diagnostics.addWidget(copy)
        layout.addLayout(diagnostics)
        layout.addWidget(self.diagnostics)
        self.resize(760, 620)

    def _browse_button(self, slot: Callable[[], None]) -> QPushButton:
        button = QPushButton("Browse…")
        button.clicked.connect(slot)
        return button

    def _browse_python(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Python 3.10 or newer", "/usr/bin" if os.name != "nt" else "")
        if path:
            self.python.setEditText(path)

    def _browse_target(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder for the engine's environment", self.target.text())
        if path:
            self.target.setText(path)

    def _show_pythons(self, task) -> None:
        self.finding = None
        self.python.lineEdit().setPlaceholderText("choose a Python 3.10 or newer (Browse…)")
        found = task.value or []
        chosen = self.python.currentText()
        self.python.clear()
        self.python.addItems([candidate.path for candidate in found if candidate.usable])
        if chosen:
            self.python.setEditText(chosen)
        problems = [candidate.problem for candidate in found if not candidate.usable]
        self.skipped.setText("\n".join(f"not usable: {problem}" for problem in problems))
        self.skipped.setVisible(bool(problems))

    def _name_button(self) -> None:
        existing = (Path(self.target.text()).expanduser() / "pyvenv.cfg").exists()
        self.install_button.setText("Repair / upgrade" if existing else "Install")

    def install(self) -> None:
        """Start the setup (the Install button); one run at a time."""
        python = self.python.currentText().strip()
        if self.task is not None:
            return
        if not python:
            self._fail("choose a Python 3.10 or newer (Browse…), or install one, then press Install")
            return
        self.log.clear()
        self.progress.setValue(0)
        self.task = SetupTask(python, Path(self.target.text()).expanduser(), self.wheel, list(settings.engine_args()))
        self.task.line.connect(self.log.appendPlainText)
        self.task.stage.connect(self.stage.setText)
        self.task.progressChanged.connect(self._show_progress)  # a method of the dialog: delivered on its thread
        self.task.on_finished = self._done
        self.install_button.setEnabled(False)
        self.cancel_button.setText("Cancel")
        QgsApplication.taskManager().addTask(self.task)

    def _show_progress(self, value: float) -> None:
        self.progress.setValue(int(value))

    def cancel(self) -> None:
        """Stop a running setup (pip is killed); without one, close the dialog."""
        if self.task is not None:
            self.task.cancel()
        else:
            self.reject()

    def _done(self, task: SetupTask) -> None:
        self.task = None
        self.install_button.setEnabled(True)
        self.cancel_button.setText("Close")
        self._name_button()
        if task.result is None:
            self._fail(task.error or "setup failed")
            return
        settings.set_value(settings.KEY_PYTHON, task.result.python)
        adopted, stale = settings.adopt_engine(task.result.engine)
        if stale is not None:
            # an engine takes a second or more to exit: not on the GUI thread, and not cancelled when the plugin
            # unloads (which waits for it), so it never runs on unowned
            in_background("PointSAM: stop the engine set up replaced", lambda call: stale.stop(), lambda call: None,
                          can_cancel=False)
        if not adopted:
            self.log.appendPlainText(f"note: the plugin keeps its engine from ${settings.ENV_PYTHON} or the remote "
                                     "engine settings, which win over the engine Python")
        self.progress.setValue(100)
        self.stage.setText(f"done: the plugin's engine runs from {task.result.python}")
        self.diagnostics.setPlainText(diagnostics(task.result.health, task.result.python))
        self.engine_ready.emit()

    def _fail(self, message: str) -> None:
        self.stage.setText(f"<b>{_escape(message)}</b>")
        self.log.appendPlainText(f"error: {message}")

    def reject(self) -> None:  # closing the dialog stops a running setup: nothing is left half done unseen
        if self.task is not None:
            self.task.cancel()
        super().reject()


def diagnostics(health: dict, python: str) -> str:
    """The engine's ``/v1/health`` and where it runs, as lines to paste into a bug report."""
    lines = [f"PointSAM engine {health.get('version', '?')}",
             f"engine Python: {health.get('python') or python}",
             f"device: {health.get('device', '?')}",
             f"torch: {health.get('torch') or 'unknown'}",
             f"GPU: {health.get('gpu') or 'none'}",
             f"model: {health.get('model', '?')}",
             f"QGIS {Qgis.QGIS_VERSION}, {platform.system()} {platform.release()}"]
    return "\n".join(lines)


def _row(*widgets: QWidget) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget, 1 if widget is widgets[0] else 0)
    return row


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
