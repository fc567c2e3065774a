"""QGIS-in-the-loop fixtures: Debian's QGIS headless, the plugin loaded, an engine from the project's environment.

Run with Debian's Python (``/usr/bin/python3 -m pytest tests/qgis``) and ``POINTSAM_ENGINE_PYTHON`` set to the
project's environment (``.ci/run`` does both). Every layer is dropped before ``exitQgis()``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

if not os.environ.get("DISPLAY"):  # under xvfb-run Qt draws on X (the docs screenshot); without X, offscreen
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, "/usr/share/qgis/python/plugins")  # processing

from qgis.core import QgsApplication, QgsProject  # noqa: E402


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
    from qgis_plugin import settings

    settings.stop_engine()
    app.exitQgis()


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
    code = ("import json, sys; from pointsam_engine.scenes import generate; "
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
            "from pointsam_engine.adapter import save_adapter; from pointsam_engine.lora import add_lora; "
            "from pointsam_engine.model import SamArch, build_sam, load_model, save_pointsam_checkpoint; "
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
