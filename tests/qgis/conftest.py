"""QGIS-in-the-loop fixtures: Debian's QGIS headless, the plugin loaded, an engine from the project's environment.

Run with Debian's Python (``/usr/bin/python3 -m pytest tests/qgis``) and ``POINTSAM_ENGINE_PYTHON`` set to the
project's environment (``.ci/run`` does both). Every layer is dropped before ``exitQgis()``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

if not os.environ.get("DISPLAY"):  # under xvfb-run Qt draws on X (the docs screenshot); without X, offscreen
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, "/usr/share/qgis/python/plugins")  # processing

from qgis.core import QgsApplication, QgsProject  # noqa: E402

_STARTED = []  # pids of the engines the plugin started in this session
_STARTED_BY = {}  # pid: the test that was running when it started


def engine_pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) ``pointsam serve``."""
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        command = (proc / "cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return False
    return state != "Z" and b"pointsam_engine.cli" in command and b"serve" in command


def wait_until_gone(pids, seconds: float = 120.0) -> list:
    """The pids still running an engine after waiting up to ``seconds`` for them to exit."""
    deadline = time.time() + seconds
    while time.time() < deadline and any(engine_pid_alive(pid) for pid in pids):
        time.sleep(0.2)
    return [pid for pid in pids if engine_pid_alive(pid)]


@pytest.fixture(scope="session", autouse=True)
def no_engine_outlives_the_suite():
    """Records every engine the plugin starts; once the plugin's exit path has run, none of them may still run."""
    from qgis_plugin.engine import EngineProcess

    start = EngineProcess._start

    def recorded(self):
        try:
            return start(self)
        finally:
            if self._proc is not None:
                _STARTED.append(self._proc.pid)
                _STARTED_BY[self._proc.pid] = os.environ.get("PYTEST_CURRENT_TEST", "?")

    EngineProcess._start = recorded
    yield _STARTED
    EngineProcess._start = start
    _plugin_exit()  # pytest may tear this down before qgis_app: run QGIS's exit path (idempotent) first
    survivors = wait_until_gone(_STARTED)
    assert not survivors, f"engines started by the plugin suite survive it: {[(p, _STARTED_BY[p]) for p in survivors]}"


def engine_python() -> str:
    python = os.environ.get("POINTSAM_ENGINE_PYTHON") or str(ROOT / ".venv" / "bin" / "python")
    if not Path(python).exists():
        pytest.skip(f"no engine environment at {python}; set POINTSAM_ENGINE_PYTHON")
    os.environ["POINTSAM_ENGINE_PYTHON"] = python
    return python


@pytest.fixture(scope="session")
def qgis_app():
    app = QgsApplication([], False)
    app.initQgis()
    from processing.core.Processing import Processing

    Processing.initialize()
    yield app
    QgsProject.instance().removeAllMapLayers()
    _plugin_exit()
    app.exitQgis()


def _plugin_exit() -> None:
    """What closing QGIS runs for the plugin: background calls cancelled, then the engine stopped (its atexit hook)."""
    from qgis_plugin import background, settings

    background.cancel_all()
    settings.stop_engine()


@pytest.fixture(scope="session")
def plugin(qgis_app):
    engine_python()
    import qgis_plugin

    instance = qgis_plugin.classFactory(_StubIface())
    instance.initGui()
    yield instance
    instance.unload()


@pytest.fixture(scope="session")
def scene(tmp_path_factory):
    """A generated buildings scene, written by the engine's environment (QGIS's Python has no numpy stack to spare)."""
    folder = tmp_path_factory.mktemp("qgis_scene")
    code = ("import json, sys; from pointsam_engine.demo.scenes import generate; "
            "print(json.dumps({k: str(v) for k, v in generate('buildings', sys.argv[1], size=384, seed=41099).items()}))")
    out = subprocess.run([engine_python(), "-c", code, str(folder)], capture_output=True, text=True, check=True)
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory):
    """A model folder, written by the engine's environment: a second model found on disk (the tiny random SAM of
    tests/conftest.py under vit_b's official file name, so the engine lists it as vit_b), an adapter for the
    bundled model (``region``, LoRA at its zero start: the bundled model's masks) and one for vit_b."""
    folder = tmp_path_factory.mktemp("models")
    code = ("import sys, torch; from pathlib import Path; from tests.conftest import TINY_ARCH; "
            "from pointsam_engine.sam.adapter import save_adapter; from pointsam_engine.sam.lora import add_lora; "
            "from pointsam_engine.sam.model import SamArch, build_sam, load_model, save_pointsam_checkpoint; "
            "folder = Path(sys.argv[1]); torch.manual_seed(0); arch = SamArch(**TINY_ARCH); "
            "save_pointsam_checkpoint(build_sam(arch), arch, folder / 'sam_vit_b_01ec64.pth', name='tiny-test')\n"
            "for base, name in (('pointsam-tiny', 'region'), (str(folder / 'sam_vit_b_01ec64.pth'), 'tinyregion')):\n"
            "    model = load_model(base, device='cpu'); add_lora(model.sam, rank=2)\n"
            "    save_adapter(model.sam, folder / f'{name}.adapter.pt', base=model, config={}, history=[])")
    subprocess.run([engine_python(), "-c", code, str(folder)], cwd=ROOT, check=True, capture_output=True)
    return folder


def feature_count(path: str) -> int:
    """Features in a vector file (the layer is dropped at once: none may outlive exitQgis())."""
    from qgis.core import QgsVectorLayer

    layer = QgsVectorLayer(path, "count", "ogr")
    n = layer.featureCount()
    del layer
    return n


class _StubIface:
    """Enough of QgisInterface for initGui() without a main window."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def grab_widget(widget, path) -> None:
    """``widget`` shown, drawn and saved as a PNG at ``path``, then hidden again."""
    widget.show()
    for _ in range(20):
        QgsApplication.processEvents()
    widget.grab().save(str(path))
    widget.hide()


def keep_screenshot(path, variable: str) -> None:
    """Copy the PNG at ``path`` to where ``$variable`` says (the docs' screenshots), rendered on X only."""
    if os.environ.get(variable):
        from qgis.PyQt.QtGui import QGuiApplication

        assert QGuiApplication.platformName() == "xcb", "render the docs screenshot on X: run under xvfb-run -a"
        shutil.copy(path, os.environ[variable])
