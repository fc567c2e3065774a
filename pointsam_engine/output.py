"""The GeoPackage: layers ``instances``, ``boxes``, ``bboxes`` and ``skipped``, written atomically.

Everything is written to a temporary file beside the target and renamed into place, so a crash,
a failure or Ctrl-C never leaves a half-written GeoPackage and never touches an existing one.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Mapping, Optional

import geopandas as gpd
import pyogrio

from .errors import OutputError

LAYERS = ("instances", "boxes", "bboxes", "skipped")
_GEOMETRY_TYPES = {"instances": "MultiPolygon", "boxes": "Polygon", "bboxes": "Polygon", "skipped": "Point"}


def check_target(path, overwrite: bool, suffix: str = ".gpkg", kind: str = "a GeoPackage") -> Path:
    """Fail early (before any work) when the output cannot be written."""
    path = Path(path)
    if not path.name.lower().endswith(suffix):
        raise OutputError(f"output {path} must end in {suffix} ({kind}); e.g. -o {path.name.split('.')[0]}{suffix}")
    if path.is_dir():
        raise OutputError(f"output {path} is a folder; give a file name such as {path / 'result.gpkg'}")
    if path.exists() and not overwrite:
        raise OutputError(f"output {path} exists; pass --overwrite to replace it or choose another name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"cannot write {path}: folder {folder} does not exist; create it or choose another output")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: folder {folder} is not writable; choose another output")
    return path


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` on success, removed on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_geopackage(layers: Mapping[str, gpd.GeoDataFrame], path, *, overwrite: bool,
                     metadata: Optional[Dict[str, object]] = None) -> Path:
    """Write every layer into one GeoPackage at ``path`` via a temporary file and an atomic rename."""
    path = check_target(path, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.gpkg", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # GDAL creates the file itself
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    try:
        for i, (name, frame) in enumerate(layers.items()):
            pyogrio.write_dataframe(frame, tmp, layer=name, driver="GPKG",
                                    geometry_type=_GEOMETRY_TYPES.get(name),
                                    dataset_metadata=meta if i == 0 else None,
                                    promote_to_multi=name == "instances")
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        raise
    return path
