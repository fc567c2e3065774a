"""``python3 -m qgis_plugin.build``: write ``dist/pointsam-<version>.zip`` for QGIS's "Install from ZIP".

The zip holds one folder, ``pointsam/``, with the plugin's modules and ``metadata.txt`` inside.
"""

from __future__ import annotations

import configparser
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "qgis_plugin"
FOLDER = "pointsam"


def version() -> str:
    meta = configparser.ConfigParser()
    meta.read(ROOT / "metadata.txt")
    return meta["general"]["version"]


def build(out_dir: Path = ROOT / "dist") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"pointsam-{version()}.zip"
    files = [p for p in sorted(PLUGIN.rglob("*")) if p.is_file() and "__pycache__" not in p.parts and p.name != "build.py"]
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(ROOT / "metadata.txt", f"{FOLDER}/metadata.txt")
        for path in files:
            zf.write(path, f"{FOLDER}/{path.relative_to(PLUGIN).as_posix()}")
    return target


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist"))
