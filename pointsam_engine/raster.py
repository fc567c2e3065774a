"""Windowed raster access and the one normalisation every chip of a raster shares.

A *working grid* is the raster's pixel grid coarsened by ``chip_scale`` (1.0: native pixels).
Chips, masks and prompt coordinates all live on the working grid, so masks from different
chips line up pixel for pixel. Pixels are only ever read through windows; the stretch is
computed once per raster from a decimated or sampled read, so there are no seams between chips.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.env import set_gdal_config
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from .config import READ_CACHE_MB, Stretch
from .errors import OptionError, RasterError

try:  # GDAL's own errors (CPLE_*) reach Python as these when rasterio does not wrap them
    from rasterio._err import CPLE_BaseError as _CPLError
except ImportError:  # pragma: no cover - a rasterio without the private module
    _CPLError = RasterioIOError
_READ_ERRORS = (rasterio.errors.RasterioError, _CPLError, OSError)

_SAMPLE_FULL_READ_PIXELS = 2048 * 2048
_SAMPLE_GRID = 16  # 16 x 16 windows ...
_SAMPLE_WINDOW = 64  # ... of 64 x 64 pixels when the raster is large and has no overviews


@dataclass(frozen=True)
class Normalization:
    """How raw band values become 8-bit: written into the run report and the GeoPackage."""

    bands: Tuple[int, int, int]  # 1-based source bands feeding R, G, B
    method: str  # "percentile", "minmax" or "none"
    percentiles: Optional[Tuple[float, float]]
    low: Tuple[float, float, float]  # value mapped to 0, per output channel
    high: Tuple[float, float, float]  # value mapped to 255, per output channel
    sar_db: bool
    nodata: Optional[float]

    def to_dict(self) -> dict:
        return asdict(self)

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Map a ``3xHxW`` array of transformed values (see :func:`to_amplitude`) to ``HxWx3`` uint8."""
        low = np.asarray(self.low, dtype=np.float64)[:, None, None]
        high = np.asarray(self.high, dtype=np.float64)[:, None, None]
        if self.method == "none":
            scaled = values
        else:
            scaled = (values - low) / np.maximum(high - low, 1e-12) * 255.0
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
        return np.clip(scaled, 0, 255).round().astype(np.uint8).transpose(1, 2, 0)


class Raster:
    """An open raster with its band choice and working grid. Use as a context manager."""

    def __init__(self, path: str, *, bands=None, nodata=None, assume_crs=None, chip_scale: float = 1.0):
        self.path = str(path)
        if not os.path.exists(self.path):
            raise RasterError(f"raster {self.path} does not exist; check the path")
        cap_block_cache()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._src = rasterio.open(self.path)
        except RasterioIOError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "unreadable"
            raise RasterError(f"cannot read raster {self.path} ({first}); give a GeoTIFF or another GDAL raster") from None
        try:
            self._check_sources()
            self.crs = self._resolve_crs(assume_crs)
            if chip_scale <= 0:
                raise OptionError(f"--chip-scale {chip_scale} must be positive, e.g. 1 (native) or 2 (half resolution)")
            self.bands = select_bands(self._src, bands)
            self.nodata = nodata if nodata is not None else self._src.nodata
        except Exception:
            self._src.close()
            raise
        self.scale = float(chip_scale)

    # -- context management -------------------------------------------------------------------
    def close(self) -> None:
        self._src.close()

    def __enter__(self) -> "Raster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- geometry ----------------------------------------------------------------------------
    def _check_sources(self) -> None:
        """A VRT (or any multi-file raster) whose source files are gone fails now, not at its first chip."""
        for source in list(getattr(self._src, "files", None) or [])[1:]:
            if not str(source).startswith("/vsi") and not os.path.exists(source):
                raise RasterError(f"raster {self.path} refers to {source}, which does not exist; restore that file "
                                  "or rebuild the raster (e.g. the VRT) without it")

    def _resolve_crs(self, assume_crs) -> CRS:
        if assume_crs:
            try:
                return CRS.from_user_input(assume_crs)
            except Exception:
                raise OptionError(f"--assume-crs {assume_crs!r} is not a CRS; give one like EPSG:32633") from None
        if self._src.crs is None:
            raise RasterError(f"raster {self.path} has no CRS; pass --assume-crs (e.g. EPSG:32633) to say which it is")
        return self._src.crs

    @property
    def width(self) -> int:
        return self._src.width

    @property
    def height(self) -> int:
        return self._src.height

    @property
    def transform(self) -> Affine:
        return self._src.transform

    @property
    def working_transform(self) -> Affine:
        """Affine of the working grid (native pixels coarsened by ``chip_scale``)."""
        a, b, c, d, e, f = tuple(self._src.transform)[:6]
        s = self.scale
        return Affine(a * s, b * s, c, d * s, e * s, f)

    def to_working(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) map x, y -> (N, 2) working-grid x (column), y (row), pixel centres at i + 0.5."""
        xy = np.asarray(xy, float).reshape(-1, 2)
        cols, rows = apply_affine(~self.working_transform, xy[:, 0], xy[:, 1])
        return np.column_stack([cols, rows])

    def on_data(self, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """For map coordinates: whether each lies on the raster, and whether it lies on data (not nodata)."""
        on_raster, cols, rows = grid_position(self.transform, self.width, self.height, x, y)
        on_data = np.zeros(len(cols), dtype=bool)
        idx = np.flatnonzero(on_raster)
        on_data[idx] = self.valid_at(np.floor(rows[idx]), np.floor(cols[idx]))
        return on_raster, on_data

    @property
    def working_shape(self) -> Tuple[int, int]:
        """``(rows, cols)`` of the working grid."""
        return math.ceil(self.height / self.scale), math.ceil(self.width / self.scale)

    @property
    def pixel_area(self) -> float:
        """Area of one working pixel in map units²."""
        t = self.working_transform
        return abs(t.a * t.e - t.b * t.d)

    @property
    def pixel_size(self) -> float:
        """Side of one working pixel in map units (geometric mean of x and y)."""
        return math.sqrt(self.pixel_area)

    def fingerprint(self) -> str:
        """Cheap identity of the file's content state: path, size, mtime and grid."""
        stat = os.stat(self.path)
        ident = (f"{os.path.realpath(self.path)}|{stat.st_size}|{stat.st_mtime_ns}|{self.width}x{self.height}"
                 f"|{tuple(self.transform)}")
        return hashlib.sha256(ident.encode()).hexdigest()[:16]

    # -- pixels ------------------------------------------------------------------------------
    def _unique_bands(self) -> Tuple[int, ...]:
        return tuple(dict.fromkeys(self.bands))

    def _read(self, window: Window, out_shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
        unique = self._unique_bands()
        kwargs = {}
        if out_shape is not None:
            kwargs = {"out_shape": (len(unique), *out_shape), "resampling": Resampling.bilinear}
        try:
            data = self._src.read(list(unique), window=window, **kwargs)
        except _READ_ERRORS as exc:  # found only when that part is read: a truncated file, a source gone
            first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise RasterError(f"cannot read raster {self.path} near pixel row {int(window.row_off)}, column "
                              f"{int(window.col_off)} ({first}); the file is damaged or truncated, or a source is "
                              "missing: check it with gdalinfo -checksum (nothing was written)") from None
        return data[[unique.index(b) for b in self.bands]]

    def _valid(self, raw: np.ndarray) -> np.ndarray:
        """``HxW`` bool: True where at least one selected band holds data."""
        invalid = np.ones(raw.shape[1:], dtype=bool)
        for band in raw:
            bad = np.zeros(band.shape, dtype=bool)
            if np.iscomplexobj(band):
                band = np.abs(band)
            if np.issubdtype(band.dtype, np.floating):
                bad |= np.isnan(band)
            if self.nodata is not None and not (isinstance(self.nodata, float) and math.isnan(self.nodata)):
                bad |= band == self.nodata
            invalid &= bad
        return ~invalid

    def sample_values(self, sar_db: bool) -> Tuple[np.ndarray, np.ndarray]:
        """A decimated ``3xN`` sample of transformed values and its validity, for the stretch."""
        rows, cols = self.height, self.width
        if rows * cols <= _SAMPLE_FULL_READ_PIXELS:
            raws = [self._read(Window(0, 0, cols, rows))]
        elif self._src.overviews(self.bands[0]):
            factor = max(rows, cols) / 1024
            raws = [self._read(Window(0, 0, cols, rows), (max(1, int(rows / factor)), max(1, int(cols / factor))))]
        else:
            raws = []
            for r in np.linspace(0, rows - _SAMPLE_WINDOW, _SAMPLE_GRID).astype(int):
                for c in np.linspace(0, cols - _SAMPLE_WINDOW, _SAMPLE_GRID).astype(int):
                    raws.append(self._read(Window(int(c), int(r), _SAMPLE_WINDOW, _SAMPLE_WINDOW)))
        valid = np.concatenate([self._valid(raw).ravel() for raw in raws])
        values = np.concatenate([to_amplitude(raw, sar_db).reshape(3, -1) for raw in raws], axis=1)
        return values, valid & np.isfinite(values).all(axis=0)

    def chip_shape(self, row0: int, col0: int, size: int) -> Tuple[int, int]:
        """``(H, W)`` of the image :meth:`read_chip` gives for this chip: the part of it on the raster."""
        return self.area_shape(row0, col0, size, size)

    def area_shape(self, row0: int, col0: int, rows: int, cols: int) -> Tuple[int, int]:
        """``(H, W)`` of the part of a ``rows x cols`` working-grid area that lies on the raster."""
        grid_rows, grid_cols = self.working_shape
        return min(rows, grid_rows - row0), min(cols, grid_cols - col0)

    def read_chip(self, row0: int, col0: int, size: int, norm: Normalization) -> Tuple[np.ndarray, np.ndarray]:
        """Read the part of a ``size``² working-grid chip that lies on the raster.

        Returns ``(image, valid)``: ``HxWx3`` uint8 and ``HxW`` bool for the chip's top-left
        ``H x W`` pixels that fall on the raster (``H, W <= size``); the model pads the rest.
        """
        return self.read_area(row0, col0, size, size, norm)

    def read_area(self, row0: int, col0: int, rows: int, cols: int, norm: Normalization,
                  step: int = 1) -> Tuple[np.ndarray, np.ndarray]:
        """Read the part of a ``rows x cols`` working-grid area that lies on the raster, at every ``step``-th
        working pixel (resampled): ``(image, valid)`` as :meth:`read_chip` gives them."""
        h, w = self.area_shape(row0, col0, rows, cols)
        s = self.scale
        window = Window(col0 * s, row0 * s, min(w * s, self.width - col0 * s), min(h * s, self.height - row0 * s))
        out_shape = None if s == 1.0 and step == 1 else (math.ceil(h / step), math.ceil(w / step))
        raw = self._read(window, out_shape)
        return norm.apply(to_amplitude(raw, norm.sar_db)), self._valid(raw)

    def valid_at(self, rows: np.ndarray, cols: np.ndarray, block: int = 256) -> np.ndarray:
        """Whether each native pixel ``(row, col)`` holds data: one window read per ``block``² tile that holds
        clicks (at most the tile around the clicks in it), so 100,000 clicks cost a few hundred reads, not 100,000."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        out = np.empty(len(rows), dtype=bool)
        if not len(rows):
            return out
        tiles = (rows // block) * (self.width // block + 1) + cols // block
        order = np.argsort(tiles, kind="stable")
        for group in np.split(order, np.flatnonzero(np.diff(tiles[order])) + 1):
            r0, c0 = int(rows[group].min()), int(cols[group].min())
            window = Window(c0, r0, int(cols[group].max()) - c0 + 1, int(rows[group].max()) - r0 + 1)
            valid = self._valid(self._read(window))
            out[group] = valid[rows[group] - r0, cols[group] - c0]
        return out


def cap_block_cache() -> None:
    """Cap GDAL's block cache at :data:`READ_CACHE_MB` for this process, unless the user set ``GDAL_CACHEMAX``
    (then theirs stands). GDAL has one cache per process, so the cap is process-wide: it is set whenever the
    engine opens a raster, and a program that imports the engine and reads rasters of its own reads them under
    it too."""
    if "GDAL_CACHEMAX" not in os.environ:
        set_gdal_config("GDAL_CACHEMAX", READ_CACHE_MB * 2**20)


def grid_position(transform: Affine, width: int, height: int, x, y) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For map coordinates: whether each lies on a grid's pixels (the right and bottom edges are the next pixels':
    off), and its column and row (fractional) on the grid."""
    cols, rows = (np.asarray(v) for v in apply_affine(~transform, np.asarray(x, float), np.asarray(y, float)))
    on = np.isfinite(cols) & np.isfinite(rows) & (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    return on, cols, rows


def grid_outline(transform: Affine, width: int, height: int):
    """A grid's outline (its four corners) in its own CRS; a rotated or sheared grid gives a parallelogram."""
    xs, ys = apply_affine(transform, np.array([0, width, width, 0]), np.array([0, 0, height, height]))
    return shapely.Polygon(np.column_stack([xs, ys]))


def apply_affine(transform: Affine, x, y) -> Tuple[np.ndarray, np.ndarray]:
    """Apply an affine to coordinate arrays (vectorized; works on every affine release)."""
    a, b, c, d, e, f = tuple(transform)[:6]
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return a * x + b * y + c, d * x + e * y + f


def select_bands(src, bands: Optional[Tuple[int, ...]]) -> Tuple[int, int, int]:
    """Three 1-based source bands: the given ones, else RGB by colour interpretation, else the first three."""
    count = src.count
    if bands is None:
        interp = list(src.colorinterp)
        rgb = [interp.index(ci) + 1 for ci in (ColorInterp.red, ColorInterp.green, ColorInterp.blue) if ci in interp]
        bands = tuple(rgb) if len(rgb) == 3 else (tuple(range(1, 4)) if count >= 3 else (1,))
    for band in bands:
        if not 1 <= band <= count:
            raise RasterError(f"band {band} does not exist: {src.name} has {count} band(s); choose --bands from 1..{count}")
    if len(bands) == 1:
        bands = bands * 3
    return tuple(bands)  # type: ignore[return-value]


def to_amplitude(raw: np.ndarray, sar_db: bool) -> np.ndarray:
    """Raw band values as float64: complex SAR as amplitude, then 10·log10 when ``sar_db``."""
    values = np.abs(raw) if np.iscomplexobj(raw) else raw
    values = values.astype(np.float64)
    if sar_db:
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(values > 0, 10.0 * np.log10(values), np.nan)
    return values


def compute_normalization(raster: Raster, stretch: Stretch, sar_db: bool = False) -> Normalization:
    """The per-band stretch of a raster, from a decimated sample that excludes nodata."""
    values, valid = raster.sample_values(sar_db)
    return normalization_from_sample(values, valid, stretch, sar_db, raster.bands, raster.nodata, raster.path)


def normalization_from_sample(values: np.ndarray, valid: np.ndarray, stretch: Stretch, sar_db: bool,
                              bands=(1, 2, 3), nodata=None, source: str = "the raster") -> Normalization:
    """The stretch of a ``3xN`` sample of transformed values (see :func:`to_amplitude`); ``valid``: (N,) bool."""
    if stretch == "none":
        low, high, method, pct = (0.0,) * 3, (255.0,) * 3, "none", None
    else:
        data = values[:, valid]
        if data.shape[1] == 0:
            raise RasterError(f"raster {source} holds only nodata where sampled; check --nodata or --bands")
        if stretch == "minmax":
            low, high, method, pct = tuple(data.min(axis=1)), tuple(data.max(axis=1)), "minmax", None
        else:
            pct = (float(stretch[0]), float(stretch[1]))
            lo, hi = np.percentile(data, pct, axis=1)
            low, high, method = tuple(lo), tuple(hi), "percentile"
    return Normalization(
        bands=tuple(bands),
        method=method,
        percentiles=pct,
        low=tuple(float(v) for v in low),
        high=tuple(float(v) for v in high),
        sar_db=sar_db,
        nodata=None if nodata is None else float(nodata),
    )


def to_working_each(ras: Raster, arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Each object's clicks on the working grid, transformed in one call (not one per object)."""
    arrays = [np.asarray(a, dtype=float).reshape(-1, 2) for a in arrays]
    flat = ras.to_working(np.vstack(arrays)) if arrays else np.zeros((0, 2))
    return np.split(flat, np.cumsum([len(a) for a in arrays])[:-1])
