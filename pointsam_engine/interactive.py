"""Click-by-click segmentation: one object from a few clicks, for the HTTP API's ``/v1/predict`` and scripts.

A click's chip is snapped to a grid of half-chip steps (the grid cell whose chip centre is nearest
the object's positive clicks), so the next click near it lands on the same chip and its embedding
comes from the cache: the encoder runs once per area an analyst works in, not once per click.
Each click then costs one decoder call.

A box (``[xmin, ymin, xmax, ymax]``, SAM's box prompt) may come with the clicks or alone; the chip is
chosen to cover it and the object is kept inside it (SAM's box masks may leak a little past the box).
The bundled model was trained on clicks only: a box alone needs an official SAM checkpoint.

Negative clicks trim the object rather than perforate it: after decoding, only the parts of the mask
that hold a positive click are kept (with a box alone, the largest part), and a hole that holds a
negative click, or lies within :data:`NEGATIVE_HOLE_PX` pixels of one, is filled, since SAM cuts such
holes around a negative placed inside the object. Other holes follow ``max_hole_area``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence, Tuple

import numpy as np
import shapely
from pyproj import CRS, Transformer
from scipy import ndimage

from .config import SegmentConfig
from .errors import OptionError, PointsError
from .masks import MaskPatch, Prompt
from .measure import Measurer, grid_tolerances
from .raster import Normalization, Raster, compute_normalization
from .sam.cache import embedding_key
from .vectorize import axis_boxes, clean_mask, oriented_boxes, polygonal, simplify_each, to_map, trace_logits

_NORMALIZATIONS_KEPT = 16
NEGATIVE_HOLE_PX = 2  # a hole this near a negative click is the negative's doing: it is filled


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
                crs: Optional[str] = None, out_crs: Optional[str] = None, predictor=None,
                box: Optional[Sequence[float]] = None, **options) -> ClickResult:
        """Segment the object at the ``positive`` clicks and/or inside ``box`` (map x, y in ``crs``; default the
        raster's CRS; ``box`` is ``[xmin, ymin, xmax, ymax]``).

        ``negative`` clicks mark what is not the object. ``predictor`` runs the model (default: the
        segmenter's own). ``options`` are :class:`SegmentConfig` fields (``bands``, ``stretch``, ``sar_db``,
        ``chip_scale``, ...).
        """
        predictor = predictor or self.predictor
        cfg = self.config.replace(**options)
        pos, neg = _points(positive, "positive", allow_empty=True), _points(negative, "negative", allow_empty=True)
        corners = _box_corners(box)
        if not len(pos) and corners is None:
            raise PointsError("no positive click and no box given; give at least one [x, y] in 'positive' or a "
                              "'box' [xmin, ymin, xmax, ymax]")
        with self._lock, _open(raster, cfg) as ras:
            pos_map, neg_map = _to_raster_crs(pos, crs, ras), _to_raster_crs(neg, crs, ras)
            _check_on_data(ras, pos_map, raster)
            corners_map = None if corners is None else _to_raster_crs(corners, crs, ras)
            box_w = None if corners is None else _working_box(ras, corners_map, raster)
            norm = self._normalization(ras, cfg)
            pos_w, neg_w = ras.to_working(pos_map), ras.to_working(neg_map)
            size = predictor.chip_size
            row0, col0 = _prompt_chip(pos_w, box_w, ras.working_shape, size)
            encoded = self._set_chip(predictor, ras, norm, row0, col0, size)
            offset = np.array([col0, row0], float)
            local_pos, local_neg = pos_w - offset, _inside(neg_w - offset, size)
            local_box = None if box_w is None else np.clip(box_w - np.r_[offset, offset], 0, size)
            prompt = Prompt(np.vstack([local_pos, local_neg]),
                            np.r_[np.ones(len(local_pos), int), np.zeros(len(local_neg), int)], local_box)
            patch = predictor.predict([prompt])[0]
            if patch is not None and local_box is not None:
                patch = _within_box(patch, local_box)
            if patch is None or not patch.mask.any():
                raise PointsError("the model found no object at these clicks; click nearer the object's middle")
            max_hole_px, tolerance = grid_tolerances(ras, cfg.max_hole_area, cfg.simplify)
            keep = trimmed_mask(patch, local_pos, local_neg, max_hole_px)
            outline = trace_logits({0: (patch.shifted(row0, col0), keep)})[0]
            if corners is not None and outline is not None:
                # an edge between a pixel centre inside the box and one outside runs past the box: cut there
                outline = polygonal(outline.intersection(shapely.Polygon(ras.to_working(corners_map))))
            simplified = simplify_each([outline], tolerance / ras.pixel_size)[0]  # on the grid, as segment does
            geom = to_map([simplified or outline], ras.working_transform)[0]
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
        key = embedding_key(raster=ras.fingerprint(), stretch=norm.to_dict(), window=(row0, col0, size),
                            scale=ras.scale, model=predictor.label)
        if predictor.set_cached_chip(key, ras.chip_shape(row0, col0, size)):
            return False
        image, valid = ras.read_chip(row0, col0, size, norm)
        return bool(predictor.set_chip(image, valid, key))


def trimmed_mask(patch: MaskPatch, positive: np.ndarray, negative: np.ndarray, max_hole_px: float) -> np.ndarray:
    """The patch's mask as the object the clicks ask for: holes a negative click made filled, then only the
    parts holding a positive click kept (see :func:`clean_mask`). Clicks are x, y on the patch's grid."""
    mask = patch.mask
    holes = ndimage.binary_fill_holes(mask) & ~mask
    labels, n = ndimage.label(holes)
    near = np.zeros_like(mask)
    rows = np.floor(negative[:, 1]).astype(int) - patch.row0
    cols = np.floor(negative[:, 0]).astype(int) - patch.col0
    inside = (rows >= 0) & (rows < mask.shape[0]) & (cols >= 0) & (cols < mask.shape[1])
    near[rows[inside], cols[inside]] = True
    if n and near.any():
        near = ndimage.binary_dilation(near, iterations=NEGATIVE_HOLE_PX)
        mask = mask | np.isin(labels, sorted(set(labels[near].tolist()) - {0}))
    filled = MaskPatch(patch.row0, patch.col0, np.where(mask, 1.0, -1.0).astype(np.float32), patch.score)
    return clean_mask(filled, positive, max_hole_px)


def _within_box(patch: MaskPatch, box: np.ndarray) -> MaskPatch:
    """The patch with every pixel whose centre lies outside ``box`` (x, y on the patch's grid) cleared."""
    rows = np.arange(patch.shape[0]) + patch.row0 + 0.5
    cols = np.arange(patch.shape[1]) + patch.col0 + 0.5
    inside = (((rows >= box[1]) & (rows <= box[3]))[:, None]) & ((cols >= box[0]) & (cols <= box[2]))[None, :]
    return MaskPatch(patch.row0, patch.col0, np.where(inside, patch.logits, -1.0).astype(np.float32), patch.score)


def _box_corners(box: Optional[Sequence[float]]) -> Optional[np.ndarray]:
    """A ``[xmin, ymin, xmax, ymax]`` box as its four corners (x, y), checked; None for no box."""
    if box is None:
        return None
    try:
        xmin, ymin, xmax, ymax = (float(v) for v in box)
    except (TypeError, ValueError):
        raise PointsError("'box' must be four numbers [xmin, ymin, xmax, ymax]") from None
    if not np.isfinite([xmin, ymin, xmax, ymax]).all():
        raise PointsError("'box' holds a coordinate that is not a finite number; give [xmin, ymin, xmax, ymax]")
    if not (xmin < xmax and ymin < ymax):
        raise PointsError(f"'box' [{xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}] is empty or inverted; give "
                          "[xmin, ymin, xmax, ymax] with xmin < xmax and ymin < ymax")
    return np.array([[xmin, ymin], [xmax, ymin], [xmax, ymax], [xmin, ymax]])


def _working_box(ras: Raster, corners: np.ndarray, raster: str) -> np.ndarray:
    """The box's envelope on the working grid, ``[xmin, ymin, xmax, ymax]`` (x = column, y = row)."""
    centre = corners.mean(axis=0, keepdims=True)
    if not ras.on_data(centre[:, 0], centre[:, 1])[0].all():
        raise PointsError(f"the box lies outside {raster}; check its CRS (raster CRS {ras.crs.to_string()})")
    rows, cols = ras.working_shape
    xy = np.clip(ras.to_working(corners), 0, [cols, rows])  # the part of the box on the raster
    return np.r_[xy.min(axis=0), xy.max(axis=0)]


def _prompt_chip(pos: np.ndarray, box: Optional[np.ndarray], grid_shape: Tuple[int, int], size: int) -> Tuple[int, int]:
    """``(row0, col0)`` of a chip holding every positive click and the box: the snapped chip (its embedding
    is shared with nearby clicks) when it holds them, else one centred on them."""
    extent = pos if box is None else np.vstack([pos, box.reshape(2, 2)])
    low, high = extent.min(axis=0), extent.max(axis=0)
    if ((high - low) > size).any():
        what = "positive clicks" if box is None else "positive clicks and the box"
        raise PointsError(f"the {what} span more than one chip ({size} working pixels); "
                          "click one object at a time, or pass a larger chip_scale")
    anchor = pos.mean(axis=0) if box is None else (low + high) / 2
    for row0, col0 in (snapped_chip(anchor, grid_shape, size), _centred_chip(low, high, grid_shape, size)):
        origin = np.array([col0, row0], float)
        if (low >= origin).all() and (high - origin <= size).all():
            return row0, col0
    raise PointsError(f"the {'box' if box is not None else 'clicks'} reach too far over the raster's edge; "
                      "draw them on the image")


def _centred_chip(low: np.ndarray, high: np.ndarray, grid_shape: Tuple[int, int], size: int) -> Tuple[int, int]:
    centre = (low + high) / 2
    col0 = int(np.clip(np.floor(centre[0] - size / 2), 0, max(grid_shape[1] - size, 0)))
    row0 = int(np.clip(np.floor(centre[1] - size / 2), 0, max(grid_shape[0] - size, 0)))
    return row0, col0


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
    x, y = _transformer(source, ras.crs).transform(xy[:, 0], xy[:, 1])
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
    measure = Measurer.of(target)
    angle, length, width = measure.box_dimensions(box)
    return ClickResult(geom, box[0], axis_boxes(geoms)[0], target, float(score), float(measure.areas(geoms)[0]),
                       float(length[0]), float(width[0]), float(angle[0]), encoded, tuple(int(v) for v in chip))


@lru_cache(maxsize=32)
def _transformer(source: CRS, target: CRS) -> Transformer:
    """``source`` to ``target``, x/y order, made once per pair (about a millisecond each, on every click otherwise)."""
    return Transformer.from_crs(source, target, always_xy=True)


def _reprojector(source: CRS, target: CRS):
    transformer = _transformer(source, target)
    return lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
