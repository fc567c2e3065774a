"""The GeoPackage: layers ``instances``, ``boxes``, ``bboxes`` and ``skipped``, written so nothing is lost.

A new GeoPackage is written to a temporary file beside the target and renamed into place. An existing
GeoPackage is written into: the run's layers go into a copy beside it (taken through SQLite, so changes
another program such as QGIS holds in its write-ahead log are included), and the copy goes back into the
file in one SQLite transaction (the backup API), so every other layer, the ``layer_styles`` table and the
file's other metadata stay, programs that have the file open keep a valid file, and a failure, a crash or
Ctrl-C leaves the file as it was. Layers of the run's names are replaced only with ``overwrite``.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import secrets
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import geopandas as gpd
import pyogrio

from .config import INSTANCES
from .errors import OutputError

LAYERS = (INSTANCES, "boxes", "bboxes", "skipped")
_GEOMETRY_TYPES = {"instances": "MultiPolygon", "boxes": "Polygon", "bboxes": "Polygon", "skipped": "Point"}
_SQLITE_HEADER = b"SQLite format 3\x00"
_GPKG_APPLICATION_IDS = (b"GPKG", b"GP10", b"GP11")
TEMP_MARK = ".pointsam-tmp"  # every temporary file the engine writes beside a target: .<name>.<pid>.<random>.pointsam-tmp<ext>
_STARTED = time.time()  # temporary files older than this process, of processes that are gone, are swept


def no_pam_sidecars() -> None:
    """Stop pyogrio's GDAL from writing ``<file>.aux.xml`` beside a GeoPackage whose dataset metadata it only
    reads (``pointsam evaluate`` on an output left one). Only pyogrio's GDAL: rasterio's keeps reading the
    ``.aux.xml`` some rasters keep their georeferencing in."""
    pyogrio.set_gdal_config_options({"GDAL_PAM_ENABLED": "NO"})


def check_name_length(path: Path, option: str = "output") -> None:
    """Refuse a file name too long for its folder's file system, with the temporary name written beside it (the
    first check of an output: any other look at such a path fails with the system's own 'File name too long')."""
    folder = path.parent if str(path.parent) else Path(".")
    for part in folder.parts:  # a folder of the path: no file system takes a name over 255 bytes
        if len(os.fsencode(part)) > 255:
            raise OutputError(f"{option} folder name {part[:24]}... is too long ({len(os.fsencode(part))} bytes; at "
                              "most 255); choose a shorter name")
    limit = _name_max(folder) - 40  # the temporary name beside it is about 40 bytes longer
    if len(os.fsencode(path.name)) > limit:
        raise OutputError(f"{option} name {path.name[:24]}... is too long ({len(os.fsencode(path.name))} bytes; at most "
                          f"{limit} here); choose a shorter name")


def check_writable(path, option: str = "output") -> Path:
    """Refuse, before any work, a file path the run could not create: a folder, a missing or read-only
    folder, a name too long for the file system. Returns ``path`` as a :class:`Path`."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    check_name_length(path, option)
    if path.is_dir() or str(path).endswith(os.sep):
        raise OutputError(f"{option} {path} is a folder; give a file name inside it, e.g. {path / 'result'}")
    if not folder.is_dir():
        raise OutputError(f"cannot write {path}: folder {folder} does not exist; create it or choose another {option}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: folder {folder} is not writable; choose another {option}")
    return path


def check_file_target(path, overwrite: bool, option: str) -> Path:
    """A file written whole (a JSON report, a merged model): writable, and an existing one replaced only with
    ``overwrite``. One rule for ``--report``, ``--json`` and ``export -o``."""
    path = check_writable(path, option)
    if _has_content(path) and not overwrite:
        raise OutputError(f"{option} {path} exists; pass --overwrite to replace it or choose another name")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"cannot replace {path}: the file is read-only; make it writable or choose another {option}")
    return path


def check_distinct(outputs: Mapping[str, object], inputs: Mapping[str, object] = {}) -> None:
    """Refuse two outputs at the same path, or an output at the path of an input (``-o`` equal to ``--report``)."""
    seen = {os.path.realpath(os.fspath(path)): option for option, path in inputs.items() if path}
    for option, path in outputs.items():
        if not path:
            continue
        key = os.path.realpath(os.fspath(path))
        if key in seen:
            role = "an input" if seen[key] in inputs else "another output"
            raise OutputError(f"{option} {path} is the same file as {seen[key]} ({role}); give each output its own "
                              "file name")
        seen[key] = option


class OutsideOutputRoot(OutputError):
    """A job's output lies outside the folder the server was told jobs may write to."""


def check_inside(path, root, option: str = "output") -> None:
    """Refuse ``path`` unless it lies inside the folder ``root`` (links resolved)."""
    real, base = os.path.realpath(os.fspath(path)), os.path.realpath(os.fspath(root))
    if os.path.commonpath([real, base]) != base:
        raise OutsideOutputRoot(f"{option} {path} is outside {base}, the only folder this engine's jobs may write "
                                "to (pointsam serve --output-root); choose a file inside it")


def check_folder(path, option: str, *, create: bool = False, writable: bool = True) -> Path:
    """Refuse, before any work, a folder option that is a file, missing (unless ``create``: then the nearest
    existing folder above must be writable) or not writable. Nothing is created here."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file, not a folder; give a folder")
    if path.is_dir():
        if writable and not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{option} {path} is not writable; choose a folder you can write to")
        return path
    if not create:
        raise OutputError(f"{option} {path} does not exist; create it or give another folder")
    above = path.absolute().parent
    while not above.exists():
        above = above.parent
    if not above.is_dir() or not os.access(above, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path} cannot be created: {above} is not a writable folder; choose another folder")
    if any(len(os.fsencode(part)) > _name_max(above) for part in path.parts):
        raise OutputError(f"{option} {path}: a folder name is too long for the file system; choose a shorter one")
    return path


def _name_max(folder: Path) -> int:
    try:
        while not folder.is_dir() and folder != folder.parent:
            folder = folder.parent
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):  # a folder name itself too long, among others
        return 255


def temp_path(path, suffix: str = "") -> Path:
    """A fresh temporary name beside ``path`` (nothing is created): hidden, marked with this process's pid."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_MARK}{suffix}")


def sweep_temps(path) -> List[Path]:
    """Remove temporary files that earlier runs left beside ``path`` (killed by kill -9, a power cut):
    only files with :data:`TEMP_MARK` named after ``path``, older than this process, of a process that is gone."""
    path = Path(path)
    removed = []
    for leftover in glob.glob(os.path.join(glob.escape(str(path.parent)), f".{glob.escape(path.name)}.*{TEMP_MARK}*")):
        pid = Path(leftover).name[len(path.name) + 2:].split(".", 1)[0]
        try:
            old = os.stat(leftover).st_mtime < _STARTED
        except OSError:
            continue
        if old and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                os.unlink(leftover)
                removed.append(Path(leftover))
            except OSError:
                pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def disk_error(exc: OSError, path) -> OutputError:
    """A one-line :class:`OutputError` for an OS error met while writing ``path`` (disk full, quota, ...)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"no space left on the device writing {path}; free some space or choose another output "
                           "(nothing was written)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"cannot write {path} ({exc.strerror}); choose another output (nothing was written)")
    if exc.errno == errno.ENAMETOOLONG:
        return OutputError(f"cannot write {path}: the name is too long for the file system; choose a shorter name")
    return OutputError(f"cannot write {path} ({exc.strerror or exc}); check the folder and run again "
                       "(nothing was written)")


def check_target(path, overwrite: bool, suffix: str = ".gpkg", kind: str = "a GeoPackage",
                 layers: Sequence[str] = LAYERS) -> Path:
    """Fail early (before any work) when the output cannot be written, or would lose something.

    A ``.gpkg`` that exists is written into, not replaced: it must be a GeoPackage, and it must not hold
    any of ``layers`` unless ``overwrite`` (which replaces those layers only). Any other file that exists
    (an adapter, a model) is replaced whole, and only with ``overwrite``. An empty file counts as absent.
    """
    path = Path(path)
    check_name_length(path)
    if path.is_dir():
        raise OutputError(f"output {path} is a folder; give a file name such as {path / ('result' + suffix)}")
    if not path.name.lower().endswith(suffix):
        raise OutputError(f"output {path} must end in {suffix} ({kind}); e.g. -o {path.name.split('.')[0][:24]}{suffix}")
    check_writable(path)
    if not _has_content(path):
        return path
    if suffix != ".gpkg":
        if not overwrite:
            raise OutputError(f"output {path} exists; pass --overwrite to replace it or choose another name")
        return path
    if not is_geopackage(path):
        raise OutputError(f"output {path} exists and is not a GeoPackage; choose another name (it is never replaced)")
    if not os.access(path, os.R_OK | os.W_OK):
        raise OutputError(f"cannot write into {path}: the file is read-only; make it writable or choose another output")
    taken = layers_in(path, layers)
    if taken and not overwrite:
        raise OutputError(f"output {path} already has layer(s) {', '.join(taken)}; pass --overwrite to replace "
                          "those layers (its other layers are kept) or choose another output")
    return path


def is_geopackage(path) -> bool:
    """Whether ``path`` is a GeoPackage: an SQLite file with a GeoPackage application id."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(72)
    except OSError:
        return False
    return head[:16] == _SQLITE_HEADER and head[68:72] in _GPKG_APPLICATION_IDS


def layers_in(path, names: Sequence[str]) -> List[str]:
    """Which of ``names`` the GeoPackage at ``path`` already holds (compared as SQLite does: ignoring case)."""
    try:
        with _gdal_config(GDAL_PAM_ENABLED="NO"):
            existing = {str(name).lower() for name, _ in pyogrio.list_layers(path)}
    except Exception as exc:
        raise OutputError(f"output {path} cannot be read as a GeoPackage ({exc}); choose another name") from None
    return [name for name in names if name.lower() in existing]


def _has_content(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


@contextmanager
def scratch_path(path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` (nothing is created), removed on the way out whatever happens, with the
    side files SQLite may leave beside it (``-journal``, ``-wal``, ``-shm``)."""
    path = Path(path)
    sweep_temps(path)
    tmp = temp_path(path, suffix)
    try:
        yield tmp
    finally:
        for leftover in (tmp, *(tmp.with_name(tmp.name + side) for side in ("-journal", "-wal", "-shm"))):
            leftover.unlink(missing_ok=True)


@contextmanager
def atomic_path(path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` on success, removed on failure
    (an exception, Ctrl-C), so ``path`` is never half-written. Every file the engine writes whole goes through
    here."""
    with scratch_path(path, suffix) as tmp:
        yield tmp
        os.replace(tmp, path)


def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_path` (a failure leaves the old file, or none)."""
    try:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)
    except OSError as exc:
        raise disk_error(exc, path) from None
    return Path(path)


def write_json(path, data) -> Path:
    """Write ``data`` as indented JSON to ``path`` through :func:`atomic_path`: values JSON has no type for are
    written as text; a failure (a full disk: one-line :class:`OutputError`) leaves neither ``path`` nor a
    temporary file."""
    try:
        with atomic_path(path) as tmp, open(tmp, "w") as fh:
            json.dump(data, fh, indent=2, default=str)
    except OSError as exc:
        raise disk_error(exc, path) from None
    return Path(path)


def write_geopackage(layers: Mapping[str, gpd.GeoDataFrame], path, *, overwrite: bool,
                     metadata: Optional[Dict[str, object]] = None, commit=None) -> Path:
    """Write ``layers`` into the GeoPackage at ``path``, keeping everything else in it (see the module doc).

    ``metadata`` items join the file's dataset metadata (other items are kept). ``commit``, when given, is
    called just before the file is changed (it may raise :class:`~pointsam_engine.errors.Cancelled`: nothing
    is written). Raises :class:`OutputError` as :func:`check_target` does, and for a full disk; on any
    failure the file is left as it was and no temporary file remains.
    """
    path = check_target(path, overwrite, layers=tuple(layers))
    target = None
    try:
        target = _open_target(path) if _has_content(path) else None
        # a new file is renamed into place; an existing one gets the finished copy back, and the copy goes
        with (atomic_path if target is None else scratch_path)(path, ".gpkg") as tmp_path:
            tmp = str(tmp_path)  # GDAL or SQLite creates the file itself
            if target is not None:
                version = _snapshot(target, tmp)
            with _gdal_config(GDAL_PAM_ENABLED="NO"):  # no .aux.xml sidecar: metadata belongs in the file
                _write_layers(layers, tmp, metadata)
            if commit is not None:
                commit()
            if target is not None:
                _copy_back(tmp, target, version, path)
    except OutputError:
        raise
    except OSError as exc:
        raise disk_error(exc, path) from None
    except (sqlite3.Error, pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, RuntimeError) as exc:
        if "No space left" in str(exc) or "full" in str(exc).lower():
            raise disk_error(OSError(errno.ENOSPC, "No space left on device"), path) from None
        raise
    finally:
        if target is not None:
            target.close()
    return path


GPKG_VERSION = "1.2"  # what new GeoPackages are written as: GDAL 3.10 writes 1.4 by default, which QGIS 3.22 on
# Debian 12 (GDAL 3.6) warns it "may only partially support" each time it opens the file


def _write_layers(layers: Mapping[str, gpd.GeoDataFrame], tmp: str, metadata: Optional[Dict[str, object]]) -> None:
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    if meta and os.path.exists(tmp):  # GDAL replaces the file's dataset metadata with what it is given
        meta = {**_dataset_metadata(tmp), **meta}
    for i, (name, frame) in enumerate(layers.items()):
        created = {} if os.path.exists(tmp) else {"dataset_options": {"VERSION": GPKG_VERSION}}
        pyogrio.write_dataframe(frame, tmp, layer=name, driver="GPKG", geometry_type=_GEOMETRY_TYPES.get(name),
                                dataset_metadata=meta if i == 0 else None, promote_to_multi=name == "instances",
                                **created)


def _dataset_metadata(path: str) -> Dict[str, str]:
    try:
        return pyogrio.read_info(path, layer=0).get("dataset_metadata") or {}
    except Exception:  # a GeoPackage without layers has no dataset metadata GDAL can read
        return {}


def _open_target(path: Path) -> sqlite3.Connection:
    try:
        return sqlite3.connect(path, timeout=30, isolation_level=None)
    except sqlite3.Error as exc:
        raise OutputError(f"cannot open output {path} ({exc}); close it in other programs "
                          "or choose another output") from None


def _snapshot(target: sqlite3.Connection, tmp: str) -> int:
    """Copy the target into ``tmp`` (a consistent copy, committed WAL content included); return its data version."""
    version = target.execute("PRAGMA data_version").fetchone()[0]
    copy = sqlite3.connect(tmp, isolation_level=None)
    try:
        target.backup(copy)
        copy.execute("PRAGMA journal_mode=DELETE")  # GDAL then writes the copy with a plain rollback journal
    finally:
        copy.close()
    return version


def _copy_back(tmp: str, target: sqlite3.Connection, version: int, path: Path) -> None:
    """Put the finished copy into the target in one SQLite transaction, unless someone changed it meanwhile."""
    if target.execute("PRAGMA data_version").fetchone()[0] != version:
        raise OutputError(f"output {path} was changed by another program while the run wrote into it; "
                          "nothing was written, run again")
    source = sqlite3.connect(tmp, isolation_level=None)
    try:
        source.backup(target)
    except sqlite3.Error as exc:
        raise OutputError(f"cannot write into output {path} ({exc}); close it in other programs "
                          "and run again") from None
    finally:
        source.close()


@contextmanager
def _gdal_config(**options: str) -> Iterator[None]:
    previous = {key: pyogrio.get_gdal_config_option(key) for key in options}
    pyogrio.set_gdal_config_options(options)
    try:
        yield
    finally:
        pyogrio.set_gdal_config_options(previous)
