"""Click-by-click segmentation: one object from a few clicks, for the HTTP API's ``/v1/predict`` and scripts.

A click's chip is snapped to a grid of half-chip steps (the grid cell whose chip centre is nearest
the object's positive clicks), so the next click near it lands on the same chip and its embedding
comes from the cache: the encoder runs once per area an analyst works in, not once per click.
Each click then costs one decoder call.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import shapely
from pyproj import CRS, Transformer

from .cache import embedding_key
from .config import SegmentConfig
from .errors import OptionError, PointsError
from .masks import Prompt
from .measure import Measurer
from .raster import Normalization, Raster, compute_normalization
from .vectorize import axis_boxes, clean_mask, oriented_boxes, polygonal, to_map, trace

_NORMALIZATIONS_KEPT = 16


@dataclass
class ClickResult:
    """One object: polygon, oriented box and axis box in ``crs``, with its score and measures."""

    polygon: object
    box: object
    bbox: object
    crs: CRS
    score: float
    area_m2: float
    length_m: float
    width_m: float
    angle_deg: float
    encoded: bool  # whether the encoder ran for this call (False: the chip's embedding was cached)
    chip: Tuple[int, int, int]  # row0, col0, size on the working grid


def snapped_chip(anchor_xy: np.ndarray, grid_shape: Tuple[int, int], size: int) -> Tuple[int, int]:
    """``(row0, col0)`` of the chip on the half-chip grid whose centre is nearest ``anchor_xy`` (working x, y)."""
    step = max(size // 2, 1)
    out = []
    for value, extent in ((anchor_xy[1], grid_shape[0]), (anchor_xy[0], grid_shape[1])):
        start = int(round((value - size / 2) / step)) * step
        out.append(int(np.clip(start, 0, max(extent - size, 0))))
    return out[0], out[1]


class ClickSegmenter:
    """Segments single objects from clicks with a predictor, caching each raster's stretch.

    Each call may pass its own ``predictor`` (another model); embeddings are cached under a key that
    names the model (the predictor's label), so models never share one. Thread-safe: calls are
    serialized, since a predictor holds one chip embedding at a time.
    """

    def __init__(self, predictor, config: Optional[SegmentConfig] = None):
        self.predictor = predictor
        self.config = config or SegmentConfig()
        self._lock = threading.Lock()
        self._norms: "OrderedDict[tuple, Normalization]" = OrderedDict()

    def predict(self, raster: str, positive: Sequence[Sequence[float]], negative: Sequence[Sequence[float]] = (),
                crs: Optional[str] = None, out_crs: Optional[str] = None, predictor=None, **options) -> ClickResult:
        """Segment the object at the ``positive`` clicks (map x, y in ``crs``; default the raster's CRS).

        ``negative`` clicks mark what is not the object. ``predictor`` runs the model (default: the
        segmenter's own). ``options`` are :class:`SegmentConfig` fields (``bands``, ``stretch``, ``sar_db``,
        ``chip_scale``, ...).
        """
        predictor = predictor or self.predictor
        cfg = self.config.replace(**options)
        pos, neg = _points(positive, "positive"), _points(negative, "negative", allow_empty=True)
        if not len(pos):
            raise PointsError("no positive click given; give at least one [x, y] in 'positive'")
        with self._lock, _open(raster, cfg) as ras:
            pos_map, neg_map = _to_raster_crs(pos, crs, ras), _to_raster_crs(neg, crs, ras)
            _check_on_data(ras, pos_map, raster)
            norm = self._normalization(ras, cfg)
            pos_w, neg_w = ras.to_working(pos_map), ras.to_working(neg_map)
            size = predictor.chip_size
            row0, col0 = snapped_chip(pos_w.mean(axis=0), ras.working_shape, size)
            encoded = self._set_chip(predictor, ras, norm, row0, col0, size)
            offset = np.array([col0, row0], float)
            local_pos, local_neg = pos_w - offset, _inside(neg_w - offset, size)
            if ((local_pos < 0) | (local_pos >= size)).any():
                raise PointsError(f"the positive clicks span more than one chip ({size} working pixels); "
                                  "click one object at a time, or pass a larger chip_scale")
            prompt = Prompt(np.vstack([local_pos, local_neg]),
                            np.r_[np.ones(len(local_pos), int), np.zeros(len(local_neg), int)])
            patch = predictor.predict([prompt])[0]
            if patch is None:
                raise PointsError("the model found no object at these clicks; click nearer the object's middle")
            max_hole_px = (cfg.max_hole_area / ras.pixel_area) if cfg.max_hole_area is not None else 25.0
            mask = clean_mask(patch, local_pos, max_hole_px)
            geom = to_map([trace(mask, patch.row0 + row0, patch.col0 + col0)], ras.working_transform)[0]
            tolerance = cfg.simplify if cfg.simplify is not None else ras.pixel_size
            geom = polygonal(shapely.simplify(geom, tolerance)) or geom
            return _result(geom, ras.crs, out_crs or crs, patch.score, encoded, (row0, col0, size))

    def prefetch(self, raster: str, point: Sequence[float], crs: Optional[str] = None, predictor=None,
                 **options) -> bool:
        """Encode the chip a click at ``point`` would use, ahead of the click; True when the encoder ran."""
        predictor = predictor or self.predictor
        cfg = self.config.replace(**options)
        with self._lock, _open(raster, cfg) as ras:
            xy = _to_raster_crs(_points([point], "point"), crs, ras)
            on_raster, _ = ras.on_data(xy[:, 0], xy[:, 1])
            if not on_raster.all():
                raise PointsError(f"the point lies outside {raster}; check its CRS (raster CRS {ras.crs.to_string()})")
            size = predictor.chip_size
            row0, col0 = snapped_chip(ras.to_working(xy)[0], ras.working_shape, size)
            return self._set_chip(predictor, ras, self._normalization(ras, cfg), row0, col0, size)

    def _normalization(self, ras: Raster, cfg: SegmentConfig) -> Normalization:
        key = (ras.fingerprint(), ras.bands, ras.nodata, str(cfg.stretch), cfg.sar_db)
        if key not in self._norms:
            self._norms[key] = compute_normalization(ras, cfg.stretch, cfg.sar_db)
            while len(self._norms) > _NORMALIZATIONS_KEPT:
                self._norms.popitem(last=False)
        self._norms.move_to_end(key)
        return self._norms[key]

    @staticmethod
    def _set_chip(predictor, ras: Raster, norm: Normalization, row0: int, col0: int, size: int) -> bool:
        image, valid = ras.read_chip(row0, col0, size, norm)
        key = embedding_key(raster=ras.fingerprint(), stretch=norm.to_dict(), window=(row0, col0, size),
                            scale=ras.scale, model=predictor.label)
        return bool(predictor.set_chip(image, valid, key))


def _open(raster: str, cfg: SegmentConfig) -> Raster:
    return Raster(raster, bands=cfg.bands, nodata=cfg.nodata, assume_crs=cfg.assume_crs, chip_scale=cfg.chip_scale)


def _points(values, name: str, allow_empty: bool = False) -> np.ndarray:
    try:
        xy = np.asarray(values, dtype=float).reshape(-1, 2) if len(values) else np.zeros((0, 2))
    except (TypeError, ValueError):
        raise PointsError(f"'{name}' must be a list of [x, y] pairs of numbers") from None
    if not np.isfinite(xy).all():
        raise PointsError(f"'{name}' holds a coordinate that is not a finite number; give [x, y] pairs")
    if not allow_empty and not len(xy):
        raise PointsError(f"'{name}' is empty; give an [x, y] pair")
    return xy


def _to_raster_crs(xy: np.ndarray, crs: Optional[str], ras: Raster) -> np.ndarray:
    if crs is None or not len(xy):
        return xy
    try:
        source = CRS.from_user_input(crs)
    except Exception:
        raise OptionError(f"crs {crs!r} is not a CRS; give one like EPSG:4326 or EPSG:32633") from None
    if source == ras.crs:
        return xy
    x, y = Transformer.from_crs(source, ras.crs, always_xy=True).transform(xy[:, 0], xy[:, 1])
    return np.column_stack([x, y])


def _check_on_data(ras: Raster, xy: np.ndarray, raster: str) -> None:
    on_raster, on_data = ras.on_data(xy[:, 0], xy[:, 1])
    if not on_raster.all():
        raise PointsError(f"a positive click lies outside {raster}; check the clicks' CRS "
                          f"(raster CRS {ras.crs.to_string()})")
    if not on_data.all():
        raise PointsError(f"a positive click lies on nodata in {raster}; click on image data")


def _inside(local: np.ndarray, size: int) -> np.ndarray:
    return local[((local >= 0) & (local < size)).all(axis=1)]


def _result(geom, raster_crs: CRS, out_crs: Optional[str], score: float, encoded: bool, chip) -> ClickResult:
    target = CRS.from_user_input(out_crs) if out_crs else raster_crs
    if target != raster_crs:
        geom = shapely.transform(geom, _reprojector(raster_crs, target))
    geoms = np.array([geom], dtype=object)
    box = oriented_boxes(geoms)
    angle, length, width = Measurer(target).box_dimensions(box)
    return ClickResult(geom, box[0], axis_boxes(geoms)[0], target, float(score), float(Measurer(target).areas(geoms)[0]),
                       float(length[0]), float(width[0]), float(angle[0]), encoded, tuple(int(v) for v in chip))


def _reprojector(source: CRS, target: CRS):
    transformer = Transformer.from_crs(source, target, always_xy=True)
    return lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
