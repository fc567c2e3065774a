"""Every object to exactly one raster, and the rasters' objects into tasks.

**The rule.** An object (a click, or the clicks sharing ``--instance-field``) is anchored at its first positive
click (lowest fid). It goes to the raster that holds the anchor on a valid pixel (not nodata) *farthest from that
raster's edge*, the distance measured in ground metres (so rasters of other resolutions or CRSs compare fairly);
a tie goes to the raster listed first. Its negative clicks go with it. An object whose anchor lies on no raster,
or only on nodata, is ``skipped`` with that reason. Only the rasters' headers are read, and the pixels under the
anchors (one windowed read per tile that holds anchors).

**Tasks.** One task per raster; a raster taller than ``band_px`` working pixels becomes bands of ``band_px``
rows, each a task that owns the objects whose anchor lies in it (its chips may read past the band: nothing is
segmented twice, because each object has one owner).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import geopandas as gpd
import numpy as np
import shapely

from ..config import SegmentConfig
from ..errors import PointSamError
from ..measure import pixel_metres
from ..points import PointTable, group_instances, read_points
from ..raster import Raster, apply_affine, grid_outline

ON_NO_RASTER = "on no raster"
ON_NODATA_ONLY = "on nodata in every raster holding it"
NO_OBJECT = "negative point with no object"
# settings a finished task's layers do not depend on (the output CRS is applied when the tasks are merged; the
# others set only speed), so --resume keeps the tasks finished under other values
NOT_IN_TASK_KEY = ("overwrite", "out_crs", "cache_dir", "cache_mb", "decoder_batch")


@dataclass
class Footprint:
    """A raster's grid, from its header: where it lies and how many metres a pixel spans."""

    path: str
    crs: object
    transform: object
    width: int
    height: int
    working_height: int
    metres_per_px: float

    def polygon(self):
        """The raster's outline in its own CRS."""
        return grid_outline(self.transform, self.width, self.height)


@dataclass(frozen=True)
class TaskSpec:
    """One task: the objects of ``raster`` (or of one band of its rows) whose clicks are ``fids``."""

    id: str
    raster: str
    fids: Tuple[int, ...]
    key: str  # changes when the raster, the clicks or the options change: --resume redoes the task then
    band: Optional[int] = None
    objects: int = 0


@dataclass
class Plan:
    """What the batch will do: the tasks, the clicks no raster takes, the rasters that could not be read."""

    tasks: List[TaskSpec]
    skipped: gpd.GeoDataFrame
    failed: List[Tuple[str, str]]  # (raster, one-line reason)
    footprints: Dict[str, Footprint]
    crs: object  # the CRS the clicks were grouped in (the first readable raster's)
    points: gpd.GeoDataFrame = field(repr=False, default=None)  # the point layer as read, by fid
    tables: Dict[str, PointTable] = field(repr=False, default_factory=dict)  # the clicks in each raster CRS (by WKT)
    positives: Dict[int, np.ndarray] = field(repr=False, default_factory=dict)  # object (point_fid) -> its tables' rows

    def clicks_in(self, crs, point_fid: int) -> np.ndarray:
        """The positive clicks ((N, 2) x, y) of the object anchored at ``point_fid``, in a raster's ``crs``."""
        table, rows = self.tables[crs.to_wkt()], self.positives[int(point_fid)]
        return np.column_stack([table.x[rows], table.y[rows]])


def read_footprint(path: str, cfg: SegmentConfig) -> Footprint:
    """The header of ``path`` (no pixel is read); raises :class:`PointSamError` when it cannot be read."""
    with Raster(path, bands=cfg.bands, nodata=cfg.nodata, assume_crs=cfg.assume_crs, chip_scale=cfg.chip_scale) as ras:
        return Footprint(path, ras.crs, ras.transform, ras.width, ras.height, ras.working_shape[0],
                         pixel_metres(ras) / ras.scale)


def plan_tasks(points, rasters: Sequence[str], cfg: SegmentConfig, band_px: int) -> Plan:
    """Read the footprints, give every object one raster (the module's rule) and cut the tasks."""
    footprints, failed = {}, []
    for path in rasters:
        try:
            footprints[path] = read_footprint(path, cfg)
        except PointSamError as exc:
            failed.append((path, str(exc)))
        except Exception as exc:  # GDAL can fail in many ways on a damaged file
            failed.append((path, f"cannot read raster {path} ({type(exc).__name__}: {str(exc).splitlines()[0]})"))
    frame = _read_frame(points, next(iter(footprints.values())).crs if footprints else None, cfg)
    if not footprints:
        return Plan([], _skipped(frame, frame.index.to_numpy(), ON_NO_RASTER, cfg), failed, {}, frame.crs, frame)
    crs0 = next(iter(footprints.values())).crs
    tables: Dict[str, PointTable] = {}
    table0 = _table(points, crs0, cfg, tables)
    instances, unattached = group_instances(table0)
    anchors = np.array([_anchor_row(table0, inst) for inst in instances], dtype=np.int64)
    owner, band, reason = _owners(points, anchors, footprints, cfg, tables, band_px)
    tasks = _tasks(instances, owner, band, list(footprints), footprints, frame, cfg, band_px)
    lost = [(fid, reason[k]) for k, inst in enumerate(instances) if owner[k] < 0 for fid in inst.pos_fids + inst.neg_fids]
    lost += [(fid, NO_OBJECT) for fid in unattached]
    skipped = _skipped(frame, np.array([f for f, _ in lost], dtype=np.int64), [r for _, r in lost], cfg)
    return Plan(tasks, skipped, failed, footprints, crs0, frame, tables, _positive_rows(table0, instances))


def _read_frame(points, crs, cfg: SegmentConfig) -> gpd.GeoDataFrame:
    """The point layer as it is, indexed by fid, after ``pointsam segment``'s checks of it (one-line errors)."""
    import pyogrio

    frame = pyogrio.read_dataframe(str(points), layer=cfg.layer, fid_as_index=True) if os.path.isfile(points) else None
    read_points(points, crs or (frame.crs if frame is not None and frame.crs else "EPSG:4326"), layer=cfg.layer,
                instance_field=cfg.instance_field, label_field=cfg.label_field, class_field=cfg.class_field)
    return frame


def _table(points, crs, cfg: SegmentConfig, cache: Dict[str, PointTable]) -> PointTable:
    key = crs.to_wkt()
    if key not in cache:
        cache[key] = read_points(points, crs, layer=cfg.layer, instance_field=cfg.instance_field,
                                 label_field=cfg.label_field, class_field=cfg.class_field)
    return cache[key]


def _positive_rows(table: PointTable, instances) -> Dict[int, np.ndarray]:
    """Each object's positive clicks as rows of the point tables (read alike, they share their rows), by point_fid."""
    rows = np.flatnonzero(table.label == 1)
    rows = rows[np.argsort(table.fid[rows], kind="stable")]
    fids = table.fid[rows]

    def of(fid: int) -> np.ndarray:
        return rows[np.searchsorted(fids, fid):np.searchsorted(fids, fid, side="right")]

    return {inst.point_fid: np.concatenate([of(f) for f in inst.pos_fids]) for inst in instances}


def _anchor_row(table: PointTable, inst) -> int:
    rows = np.flatnonzero((table.fid == inst.point_fid) & (table.label == 1))
    return int(rows[0])


def _owners(points, anchors: np.ndarray, footprints: Dict[str, Footprint], cfg: SegmentConfig,
            tables: Dict[str, PointTable], band_px: int):
    """Per object: the index of its raster (-1: none), its band, and why it has none."""
    n = len(anchors)
    best = np.full(n, -np.inf)
    owner, band = np.full(n, -1), np.zeros(n, dtype=np.int64)
    on_any = np.zeros(n, dtype=bool)
    for k, (path, fp) in enumerate(footprints.items()):
        table = _table(points, fp.crs, cfg, tables)
        x, y = table.x[anchors], table.y[anchors]
        cols, rows = (np.asarray(v, float) for v in apply_affine(~fp.transform, x, y))
        edge = np.minimum.reduce([cols, fp.width - cols, rows, fp.height - rows]) * fp.metres_per_px
        near = np.flatnonzero(np.isfinite(edge) & (edge > 0) & (edge > best))
        if not len(near):
            continue
        on_any[near] = True
        with Raster(path, bands=cfg.bands, nodata=cfg.nodata, assume_crs=cfg.assume_crs) as ras:
            on_data = ras.valid_at(np.floor(rows[near]), np.floor(cols[near]))
        take = near[on_data]
        best[take], owner[take] = edge[take], k
        band[take] = np.floor(rows[take] / cfg.chip_scale / band_px).astype(np.int64) if fp.working_height > band_px else 0
    reason = np.where(on_any, ON_NODATA_ONLY, ON_NO_RASTER)
    return owner, band, reason


def _tasks(instances, owner, band, paths: List[str], footprints, frame, cfg: SegmentConfig,
           band_px: int) -> List[TaskSpec]:
    tasks = []
    cfg_key = json.dumps({k: v for k, v in asdict(cfg).items() if k not in NOT_IN_TASK_KEY},
                         sort_keys=True, default=str)
    for k, path in enumerate(paths):
        mine = np.flatnonzero(owner == k)
        banded = footprints[path].working_height > band_px
        for b in sorted(set(band[mine].tolist())):
            members = mine[band[mine] == b]
            fids = tuple(sorted({f for i in members for f in instances[i].pos_fids + instances[i].neg_fids}))
            tasks.append(TaskSpec(_task_name(len(tasks), path, b if banded else None), path, fids,
                                  _task_key(path, fids, frame, cfg_key), b if banded else None, len(members)))
    return tasks


def _task_name(index: int, path: str, band: Optional[int]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(path))[0])[:60]
    return f"{index:05d}-{stem}" + (f"-band{band}" if band is not None else "")


def _task_key(path: str, fids: Tuple[int, ...], frame: gpd.GeoDataFrame, cfg_key: str) -> str:
    stat = os.stat(path)
    subset = frame.loc[list(fids)]
    digest = hashlib.sha256()
    for part in (os.path.realpath(path), str(stat.st_size), str(stat.st_mtime_ns), cfg_key, ",".join(map(str, fids))):
        digest.update(part.encode() + b"\0")
    digest.update("".join(shapely.to_wkb(subset.geometry.values, hex=True)).encode())
    digest.update(subset.drop(columns=subset.geometry.name).to_json(default_handler=str).encode())
    return digest.hexdigest()[:20]


def _skipped(frame: gpd.GeoDataFrame, fids: np.ndarray, reasons, cfg: SegmentConfig) -> gpd.GeoDataFrame:
    """Skipped clicks as the per-raster ``skipped`` layer has them (one row per fid), with an empty ``source``."""
    fids = np.asarray(fids, dtype=np.int64)
    reasons = [reasons] * len(fids) if isinstance(reasons, str) else list(reasons)
    rows = frame.loc[fids] if len(fids) else frame.iloc[:0]
    label = rows[cfg.label_field].astype(int).to_numpy() if cfg.label_field else np.ones(len(rows), dtype=np.int32)
    data = {"point_fid": fids, "label": label.astype(np.int32), "reason": np.array(reasons, dtype=object)}
    if cfg.class_field:
        data["class"] = rows[cfg.class_field].to_numpy(dtype=object)
    data["source"] = np.array([""] * len(fids), dtype=object)
    geoms = shapely.get_geometry(rows.geometry.values, 0) if len(rows) else np.array([], dtype=object)
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(geoms, crs=frame.crs).values, crs=frame.crs)

