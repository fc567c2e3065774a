"""One real engine setup, the way a new user gets one: build the plugin zip, unzip it into a plugins folder as
QGIS's "Install from ZIP" does, press Install in the plugin's "Set up engine…" dialog and let its task build an
environment from the zip's wheel (dependencies from the package index, or pip's cache and this machine's
local wheels), then check the engine runs from that environment and the setting names it. A second run over
a damaged environment repairs it in place. The dialog after the install is rendered to a PNG
(``POINTSAM_SETUP_SCREENSHOT=path`` keeps a copy, e.g. docs/images/qgis_setup.png; on X only: run under
``xvfb-run -a``). Takes a few minutes: pip unpacks torch into the new environment."""

from __future__ import annotations

import configparser
import importlib
import re
import shutil
import sys
import time
import zipfile
from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsSettings

from .conftest import ROOT, grab_widget, keep_screenshot, wait_until_gone


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """The plugin built into a zip and unzipped into a fresh plugins folder, imported from there as ``pointsam``."""
    from qgis_plugin import build

    dist = tmp_path_factory.mktemp("dist")
    archive = build.build(dist)
    plugins = tmp_path_factory.mktemp("plugins")
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(plugins)
    sys.path.insert(0, str(plugins))
    yield archive, plugins / "pointsam"
    sys.path.remove(str(plugins))


def test_the_zip_carries_the_engine_wheel_of_its_own_version(installed_plugin):
    archive, folder = installed_plugin
    meta = configparser.ConfigParser()
    meta.read(ROOT / "metadata.txt")
    version = meta["general"]["version"]
    assert re.search(rf'^version = "{re.escape(version)}"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert archive.name == f"pointsam-{version}.zip"
    wheel = folder / "wheels" / f"pointsam-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(f"pointsam-{version}.dist-info/METADATA").decode()
    assert f"\nVersion: {version}\n" in metadata
    assert "pointsam_engine/models/pointsam-tiny.pt" in names and "pointsam_engine/cli.py" in names
    assert not any("__pycache__" in name for name in names)


def test_the_zip_carries_the_digitize_icon_where_the_plugin_looks_for_it(qgis_app, installed_plugin):
    from qgis.PyQt.QtGui import QIcon

    archive, folder = installed_plugin
    with zipfile.ZipFile(archive) as zf:
        assert "pointsam/icons/digitize.svg" in zf.namelist()
    icon = importlib.import_module("pointsam.plugin").DIGITIZE_ICON
    assert Path(icon) == folder / "icons" / "digitize.svg" and Path(icon).is_file()
    assert not QIcon(icon).pixmap(24, 24).isNull()


def _wait(done, seconds=1500):
    """Run QGIS's event loop until ``done()`` (the dialog's tasks report on the GUI thread)."""
    deadline = time.time() + seconds
    while time.time() < deadline and not done():
        QgsApplication.processEvents()
        time.sleep(0.05)
    for _ in range(20):
        QgsApplication.processEvents()
    assert done(), "the dialog's task did not finish"


def test_the_setup_dialog_builds_an_environment_from_the_zip_and_repairs_it(qgis_app, installed_plugin, tmp_path,
                                                                            monkeypatch, no_engine_outlives_the_suite):
    monkeypatch.delenv("POINTSAM_ENGINE_PYTHON", raising=False)  # it would win over the setting the dialog writes
    plugin = importlib.import_module("pointsam")
    assert Path(plugin.__file__).parent == installed_plugin[1]
    dialog_module = importlib.import_module("pointsam.gui.setup_dialog")
    settings = importlib.import_module("pointsam.settings")
    saved = QgsSettings().value(settings.KEY_PYTHON, "")
    venv = tmp_path / "engine-env"
    dialog = dialog_module.SetupDialog(target=venv)
    try:
        _wait(lambda: dialog.finding is None)
        assert dialog.python.count() > 0, dialog.skipped.text()  # QGIS's own Python at least
        assert dialog.install_button.text() == "Install"
        dialog.install()
        _wait(lambda: dialog.task is None)
        log = dialog.log.toPlainText()
        python = str(venv / "bin" / "python")
        assert QgsSettings().value(settings.KEY_PYTHON, "") == python, log[-3000:]
        assert "Successfully installed" in log
        health = settings.engine().client().health()  # the engine the setup started, adopted by the plugin
        no_engine_outlives_the_suite.append(settings.engine().pid)
        assert health["version"] == plugin_version(installed_plugin[1])
        assert Path(health["python"]) == Path(python) and health["torch"]
        text = dialog.diagnostics.toPlainText()
        assert f"PointSAM engine {health['version']}" in text and f"torch: {health['torch']}" in text
        _screenshot(dialog, tmp_path / "setup.png")

        first = settings.engine().pid
        shutil.rmtree(next((venv / "lib").glob("python3*/site-packages/pointsam_engine")))  # a damaged engine
        assert dialog.install_button.text() == "Repair / upgrade"
        dialog.install()
        _wait(lambda: dialog.task is None)
        log = dialog.log.toPlainText()
        assert f"repairing the environment in {venv}" in log, log[-3000:]
        assert settings.engine().client().health()["version"] == health["version"]
        no_engine_outlives_the_suite.append(settings.engine().pid)
        assert wait_until_gone([first]) == [], "the engine of the first setup was replaced, not stopped"

        dialog.target.setText(str(tmp_path / "cancelled-env"))
        dialog.install()
        assert dialog.cancel_button.text() == "Cancel"
        _wait(lambda: "-m venv" in dialog.log.toPlainText())
        dialog.cancel()  # while `python -m venv` runs
        _wait(lambda: dialog.task is None)
        assert "setup cancelled" in dialog.stage.text() and dialog.cancel_button.text() == "Close"
        assert QgsSettings().value(settings.KEY_PYTHON, "") == python, "a cancelled setup changes no setting"
    finally:
        settings.stop_engine()
        QgsSettings().setValue(settings.KEY_PYTHON, saved) if saved else QgsSettings().remove(settings.KEY_PYTHON)
        dialog.deleteLater()


def plugin_version(folder: Path) -> str:
    meta = configparser.ConfigParser()
    meta.read(folder / "metadata.txt")
    return meta["general"]["version"]


def _screenshot(dialog, path: Path) -> None:
    grab_widget(dialog, path)
    keep_screenshot(path, "POINTSAM_SETUP_SCREENSHOT")


def test_a_setup_that_cannot_run_says_what_to_do_in_one_line_and_changes_no_setting(qgis_app, tmp_path):
    from qgis_plugin import settings
    from qgis_plugin.gui.setup_dialog import SetupDialog

    before = settings.configured_python()
    dialog = SetupDialog(target=tmp_path / "env", wheel=tmp_path / "pointsam-0.1.0-py3-none-any.whl")
    _wait(lambda: dialog.finding is None)
    dialog.python.setEditText(str(tmp_path / "python3.9"))  # a Python that is not there
    dialog.install()
    _wait(lambda: dialog.task is None)
    assert f"{tmp_path / 'python3.9'} does not run" in dialog.stage.text() and "choose another Python" in dialog.stage.text()
    assert settings.configured_python() == before and not (tmp_path / "env").exists()
    assert dialog.install_button.isEnabled() and dialog.diagnostics.toPlainText() == ""
    dialog.deleteLater()
