"""Which rasters a batch runs over: ``--rasters`` given as a folder, a glob, a list file or a mosaic VRT.

Each spec expands to raster paths (sorted, duplicates dropped): a folder gives its raster files (one level), a
glob its matches, a ``.txt`` one path per line (relative to the list's folder; blank lines and ``#`` comments
skipped), a ``.vrt`` its source files (a VRT with no source files is a raster itself), any other file itself.
A spec that names nothing is bad input (:class:`RasterError`); a raster that exists but cannot be read is not:
the batch records it in ``failed`` and goes on.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, List

from ..errors import RasterError

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2", ".nc", ".hdf", ".h5")


def list_rasters(specs: Iterable[str]) -> List[str]:
    """The raster paths of ``--rasters`` specs, in order (sorted within each spec), each once."""
    out: List[str] = []
    for spec in specs:
        for path in _expand(str(spec)):
            if path not in out:
                out.append(path)
    if not out:
        raise RasterError("--rasters names no raster; give a folder, a glob such as 'tiles/*.tif', a list file "
                          "(.txt, one path per line) or a mosaic .vrt")
    return out


def _expand(spec: str) -> List[str]:
    if glob.has_magic(spec):
        found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not found:
            raise RasterError(f"--rasters {spec!r} matches no file; check the pattern (quote it in the shell)")
        return found
    path = Path(spec)
    if path.is_dir():
        found = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)
        if not found:
            raise RasterError(f"--rasters folder {spec} holds no raster ({', '.join(RASTER_SUFFIXES)}); "
                              "give the folder of the rasters, or a glob")
        return found
    if not path.is_file():
        raise RasterError(f"--rasters {spec} does not exist; give a folder, a glob, a list file (.txt) or a .vrt")
    if path.suffix.lower() == ".txt":
        return _listed(path)
    if path.suffix.lower() == ".vrt":
        return _vrt_sources(path)
    return [str(path)]


def _listed(path: Path) -> List[str]:
    out = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        item = Path(line) if os.path.isabs(line) else path.parent / line
        if not item.is_file():
            raise RasterError(f"{path} line {number} names {line}, which is not a file; fix or remove that line")
        out.append(str(item))
    if not out:
        raise RasterError(f"--rasters list {path} names no raster; write one raster path per line")
    return out


def _vrt_sources(path: Path) -> List[str]:
    """The source files of a mosaic VRT (read from its XML: no pixel is read), or the VRT itself."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return [str(path)]  # not readable as XML: GDAL says why when the batch opens it (failed)
    sources = []
    for node in root.iter("SourceFilename"):
        name = (node.text or "").strip()
        if not name or name.startswith("/vsi"):
            continue
        relative = node.get("relativeToVRT", "0") == "1" or not os.path.isabs(name)
        full = str(path.parent / name) if relative else name
        if full not in sources:
            sources.append(full)
    missing = [s for s in sources if not os.path.isfile(s)]
    if missing:
        raise RasterError(f"mosaic {path} refers to {missing[0]}, which does not exist; restore it or rebuild the VRT")
    return sources or [str(path)]
