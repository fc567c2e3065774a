"""``python3 -m qgis_plugin.build``: write ``dist/pointsam-<version>.zip`` for QGIS's "Install from ZIP".

The zip holds one folder, ``pointsam/``, with the plugin's modules, ``metadata.txt`` and the engine wheel
``wheels/pointsam-<version>-py3-none-any.whl`` (with the bundled model) that "Set up engine…" installs.
The wheel is built by ``pip wheel`` (pip comes with every Python that can make a venv) from a copy of the
sources, so the build leaves nothing in the working tree.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "qgis_plugin"
FOLDER = "pointsam"
ENGINE_SOURCES = ("pyproject.toml", "README.md", "pointsam_engine", "training")


def version() -> str:
    """The plugin's version (``metadata.txt``), which is also the engine wheel's."""
    meta = configparser.ConfigParser()
    meta.read(ROOT / "metadata.txt")
    return meta["general"]["version"]


def engine_version() -> str:
    """The engine package's version in ``pyproject.toml``."""
    match = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    return match.group(1) if match else ""


def build_wheel(out_dir: Path) -> Path:
    """Build the engine wheel into ``out_dir`` with ``pip wheel`` (no dependencies) and return its path."""
    if engine_version() != version():
        raise SystemExit(f"error: metadata.txt says version {version()} but pyproject.toml says {engine_version()}; "
                         "make them equal")
    with tempfile.TemporaryDirectory(prefix="pointsam-wheel-") as tmp:
        source = Path(tmp)
        for name in ENGINE_SOURCES:
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                shutil.copy2(ROOT / name, source / name)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
                        "--wheel-dir", str(out_dir), str(source)], check=True, stdin=subprocess.DEVNULL)
    return out_dir / f"pointsam-{version()}-py3-none-any.whl"


def build(out_dir: Path = ROOT / "dist") -> Path:
    """Write the plugin zip (with the engine wheel inside) into ``out_dir`` and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"pointsam-{version()}.zip"
    files = [p for p in sorted(PLUGIN.rglob("*")) if p.is_file() and "__pycache__" not in p.parts and p.name != "build.py"]
    with tempfile.TemporaryDirectory(prefix="pointsam-wheels-") as wheels:
        wheel = build_wheel(Path(wheels))
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(ROOT / "metadata.txt", f"{FOLDER}/metadata.txt")
            for path in files:
                zf.write(path, f"{FOLDER}/{path.relative_to(PLUGIN).as_posix()}")
            zf.write(wheel, f"{FOLDER}/wheels/{wheel.name}", compress_type=zipfile.ZIP_STORED)
    return target


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist"))
