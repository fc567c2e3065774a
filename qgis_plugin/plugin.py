"""The plugin object QGIS loads: the Processing provider, the PointSAM dock and the digitizing map tool."""

from __future__ import annotations

import os

from qgis.core import Qgis, QgsApplication, QgsProject
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QPushButton

from . import background, settings
from .compat import QAction
from .errors import needs_setup
from .processing.provider import PointSamProvider

DIGITIZED_FILE = "pointsam_digitized.gpkg"
DIGITIZE_ICON = os.path.join(os.path.dirname(__file__), "icons", "digitize.svg")
DIGITIZE_TIP = ("Click objects on the raster chosen in the PointSAM dock: left click adds, right click or Shift+click "
                "removes, a drag draws a box; Enter accepts, Backspace undoes a click, Esc clears. Accepted objects "
                "go into the edits of the layer chosen beside this button: Ctrl+Z undoes one, Save Layer Edits "
                "(Layer menu or the Digitizing toolbar) writes them to its file.")


class PointSamPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.dock = None
        self.action = None
        self.tool = None
        self.tool_line = None  # the message-bar item showing the digitizing tool's state
        self.digitize_bar = None  # "into: [layer]" beside the digitize action
        self.digitize_bar_action = None
        self.setup_action = None
        self.options_factory = None
        self.setup_dialog = None

    def initProcessing(self) -> None:  # noqa: N802
        self.provider = PointSamProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802
        from .gui.dock import PointSamDock

        self.initProcessing()
        self.dock = PointSamDock(self._client, self.iface.mainWindow(), notify=self._warn)
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.action = QAction(QIcon(DIGITIZE_ICON), "PointSAM: digitize by clicking", self.iface.mainWindow())
        self.action.setToolTip(DIGITIZE_TIP)
        self.action.setCheckable(True)
        self.action.toggled.connect(self._digitize)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToMenu("PointSAM", self.action)
        from .gui.digitize_bar import DigitizeBar

        canvas = self.iface.mapCanvas()
        if canvas is not None:
            canvas.mapToolSet.connect(self._tool_set)
        self.digitize_bar = DigitizeBar(self._digitized_layer)
        self.digitize_bar_action = self.iface.addToolBarWidget(self.digitize_bar)
        self._add_setup()

    def _add_setup(self) -> None:
        from .gui.settings_page import SettingsPageFactory

        self.setup_action = QAction("Set up engine…", self.iface.mainWindow())
        self.setup_action.triggered.connect(self.show_setup)
        self.iface.addPluginToMenu("PointSAM", self.setup_action)
        self.options_factory = SettingsPageFactory(self.show_setup)
        self.iface.registerOptionsWidgetFactory(self.options_factory)

    def show_setup(self) -> None:
        """Open the "Set up engine…" dialog (menu Plugins > PointSAM, the settings page, no-engine messages)."""
        from .gui.setup_dialog import SetupDialog

        if self.setup_dialog is None:
            self.setup_dialog = SetupDialog(self.iface.mainWindow())
            if self.dock is not None:  # the new engine's models replace "engine default (Refresh lists …)"
                self.setup_dialog.engine_ready.connect(self.dock.load_models)
        self.setup_dialog.show()
        self.setup_dialog.raise_()

    def unload(self) -> None:
        if self.setup_action is not None:
            self.iface.removePluginMenu("PointSAM", self.setup_action)
            self.iface.unregisterOptionsWidgetFactory(self.options_factory)
            self.setup_action = self.options_factory = None
        if self.setup_dialog is not None:
            self.setup_dialog.reject()
            self.setup_dialog.deleteLater()
            self.setup_dialog = None
        canvas = self.iface.mapCanvas()
        if canvas is not None and self.action is not None:
            canvas.mapToolSet.disconnect(self._tool_set)
        if self.tool is not None:
            canvas.unsetMapTool(self.tool)
            self.tool = None
        if self.digitize_bar_action is not None:
            self.iface.removeToolBarIcon(self.digitize_bar_action)
            self.digitize_bar_action = None
        if self.digitize_bar is not None:
            self.digitize_bar.deleteLater()
            self.digitize_bar = None
        if self.action is not None:
            self.iface.removeToolBarIcon(self.action)
            self.iface.removePluginMenu("PointSAM", self.action)
            self.action = None
        if self.dock is not None:
            self.iface.removeDockWidget(self.dock)
            self.dock.drop_temporary_outputs()
            self.dock.deleteLater()
            self.dock = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        background.cancel_all()  # a click or refresh still running must not start an engine after this
        settings.stop_engine()

    def _warn(self, text: str) -> None:
        bar = self.iface.messageBar()
        if bar is None:
            return
        if not needs_setup(text):
            bar.pushWarning("PointSAM", text)
            return
        message = bar.createMessage("PointSAM", text)
        button = QPushButton("Set up engine…")
        button.clicked.connect(self.show_setup)
        message.layout().addWidget(button)
        bar.pushWidget(message, Qgis.MessageLevel.Warning)

    def _client(self):
        return settings.engine().client()

    def _digitize(self, on: bool) -> None:
        canvas = self.iface.mapCanvas()
        if not on:
            if self.tool is not None:
                canvas.unsetMapTool(self.tool)
            return
        from .gui.map_tool import PointSamMapTool

        self.tool = PointSamMapTool(canvas, self.dock.raster.currentLayer, self._client, self.digitize_bar.target,
                                    self.dock.choice)
        self.tool.message.connect(self._warn)
        self.tool.state.connect(self._status)
        canvas.setMapTool(self.tool)

    def _tool_set(self, tool, _previous=None) -> None:
        """Another map tool took over (Pan, Identify, another plugin's): the digitize button pops out, as QGIS's
        own tools' buttons do, so that the next press starts digitizing again instead of stopping it."""
        if self.action is not None and self.action.isChecked() and (self.tool is None or tool is not self.tool):
            blocked = self.action.blockSignals(True)
            self.action.setChecked(False)
            self.action.blockSignals(blocked)

    def _digitized_layer(self):
        """The default target: "PointSAM digitized" in pointsam_digitized.gpkg beside the project (or in ~)."""
        from .layers import digitized_layer

        folder = QgsProject.instance().homePath() or os.path.expanduser("~")
        crs = self.iface.mapCanvas().mapSettings().destinationCrs()
        return digitized_layer(os.path.join(folder, DIGITIZED_FILE), crs)

    def _status(self, text: str) -> None:
        """The digitizing tool's state (what it waits for, or the last answer and what to do next) in one item of
        the message bar above the map, updated in place and removed when empty: the status bar's message area is
        a few words wide beside QGIS's own widgets in a 1280-px window, and cut the instruction off."""
        bar = self.iface.messageBar()
        if bar is None:
            return
        shown = self.tool_line is not None and self.tool_line in bar.items()  # the analyst may have closed it
        if not text:
            if shown:
                bar.popWidget(self.tool_line)
            self.tool_line = None
        elif shown:
            self.tool_line.setText(text)
        else:
            self.tool_line = bar.createMessage(text)
            bar.pushItem(self.tool_line)
