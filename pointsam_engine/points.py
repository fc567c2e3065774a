"""Point prompts: read any OGR point layer, reproject it to the raster CRS, group it into objects.

A *prompt point* is one click. An *instance* is one object to segment: its positive points
(one, or several sharing ``--instance-field``) and its negative points. Coordinates here are in
the raster CRS; the pipeline turns them into working-grid pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import pandas as pd
import pyogrio
import shapely
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from scipy.spatial import cKDTree

from .errors import PointsError
from .output import no_pam_sidecars

no_pam_sidecars()


@dataclass
class PointTable:
    """Every click, one row per point (a MultiPoint feature gives one row per part)."""

    fid: np.ndarray  # int64 source feature id
    x: np.ndarray  # raster CRS
    y: np.ndarray
    label: np.ndarray  # int8: 1 positive, 0 negative
    instance: np.ndarray  # object: instance key (the field value, or the fid)
    cls: Optional[np.ndarray]  # object, when --class-field is given

    def __len__(self) -> int:
        return len(self.fid)

    def subset(self, keep: np.ndarray) -> "PointTable":
        return PointTable(self.fid[keep], self.x[keep], self.y[keep], self.label[keep], self.instance[keep],
                          None if self.cls is None else self.cls[keep])


@dataclass
class Instance:
    """One object to segment: its clicks in the raster CRS."""

    index: int
    key: object
    point_fid: int  # fid of its first positive point
    pos: np.ndarray  # (N, 2) x, y
    neg: np.ndarray  # (M, 2) x, y
    cls: object = None
    pos_fids: List[int] = field(default_factory=list)
    neg_fids: List[int] = field(default_factory=list)


def read_points(path: str, raster_crs, *, layer=None, instance_field=None, label_field=None,
                class_field=None) -> PointTable:
    """Read a point layer and reproject it to ``raster_crs`` (anything pyproj accepts)."""
    path = str(path)
    if not os.path.exists(path):
        raise PointsError(f"point layer {path} does not exist; check the path")
    layer = _choose_layer(path, layer)
    try:
        frame = pyogrio.read_dataframe(path, layer=layer, fid_as_index=True)
    except Exception as exc:  # pyogrio raises several DataSource/Field errors
        raise _unreadable(path, exc) from None
    name = f"{path}" + (f" (layer {layer})" if layer else "")
    if getattr(frame, "_geometry_column_name", None) not in frame.columns:
        raise PointsError(f"{name} has no geometries (a table, e.g. a CSV); give a point layer, or make one in QGIS "
                          "(Create Points Layer from Table) and save it as a GeoPackage")
    if len(frame) == 0:
        raise PointsError(f"point layer {name} has no features; digitize at least one point per object")
    for option, fname in (("--instance-field", instance_field), ("--label-field", label_field), ("--class-field", class_field)):
        if fname and fname not in frame.columns:
            fields = ", ".join(c for c in frame.columns if c != "geometry") or "none"
            raise PointsError(f"{option} {fname!r} is not a field of {name}; its fields are: {fields}")
    geoms = frame.geometry.values
    present = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    kinds = set(shapely.get_type_id(geoms[present]).tolist())
    if not present.any():
        raise PointsError(f"point layer {name} has only empty geometries; digitize at least one point per object")
    if not kinds <= {0, 4}:  # Point, MultiPoint
        found = sorted({g.geom_type for g in geoms[present] if g.geom_type not in ("Point", "MultiPoint")})
        raise PointsError(f"{name} holds {', '.join(found)} geometries; give a point layer (one point per object)")
    if frame.crs is None:
        raise PointsError(f"point layer {name} has no CRS; assign one (QGIS: Layer Properties > Source) and save it again")
    frame = frame[present]
    parts, index = shapely.get_parts(frame.geometry.values, return_index=True)
    xy = shapely.get_coordinates(parts)
    x, y = Transformer.from_crs(ProjCRS.from_user_input(frame.crs), ProjCRS.from_user_input(raster_crs),
                                always_xy=True).transform(xy[:, 0], xy[:, 1])
    fid = frame.index.to_numpy(dtype=np.int64)[index]
    label = _labels(frame, label_field, name)[index]
    instance = (frame[instance_field].to_numpy(dtype=object) if instance_field else fid.astype(object))
    if instance_field:
        instance = instance[index]
    cls = frame[class_field].to_numpy(dtype=object)[index] if class_field else None
    return PointTable(fid, np.asarray(x, float), np.asarray(y, float), label, instance, cls)


def _unreadable(path: str, exc: Exception) -> PointsError:
    return PointsError(f"cannot read point layer {path} ({str(exc).splitlines()[0]}); "
                       "give a GeoPackage, Shapefile or GeoJSON")


def _choose_layer(path: str, layer: Optional[str]) -> Optional[str]:
    try:
        layers = [row[0] for row in pyogrio.list_layers(path)]
    except Exception as exc:
        raise _unreadable(path, exc) from None
    if layer is not None:
        if layer not in layers:
            raise PointsError(f"{path} has no layer {layer!r}; its layers are: {', '.join(layers)}")
        return layer
    if len(layers) > 1:
        raise PointsError(f"{path} has {len(layers)} layers ({', '.join(layers)}); choose one with --layer")
    return None


def _labels(frame, label_field: Optional[str], name: str) -> np.ndarray:
    if not label_field:
        return np.ones(len(frame), dtype=np.int8)
    values = frame[label_field]
    bad = ~values.isin([0, 1, "0", "1"])
    if bad.any():
        fid = frame.index[bad.to_numpy()][0]
        raise PointsError(f"--label-field {label_field!r} of {name} is {values[bad].iloc[0]!r} at fid {fid}; "
                          "use 1 for positive and 0 for negative points")
    return values.astype(int).to_numpy(dtype=np.int8)


def group_instances(points: PointTable) -> tuple[list[Instance], list[int]]:
    """Group clicks into objects, in O(n log n).

    Points sharing an instance key form one object (objects in order of their key's first click); a
    point whose instance field is empty (NULL) is an object of its own, keyed by its fid. A negative point
    whose key has no positive point (no ``--instance-field``, or a group of negatives only) is attached to
    the object with the nearest positive point, where a person clicking "not this" means it. Returns the
    objects and the fids of instance groups that had no positive point at all
    while an instance field was given.
    """
    codes, keys = _instance_codes(points)
    order = np.argsort(codes, kind="stable")  # rows of each key together, in table order
    bounds = np.searchsorted(codes[order], np.arange(len(keys) + 1))
    instances: list[Instance] = []
    loose_neg: list[np.ndarray] = []
    for code, key in enumerate(keys):
        rows = order[bounds[code]:bounds[code + 1]]
        pos_rows = rows[points.label[rows] == 1]
        neg_rows = rows[points.label[rows] == 0]
        if len(pos_rows) == 0:
            loose_neg.append(neg_rows)
            continue
        instances.append(_instance(points, len(instances), key, pos_rows, neg_rows))
    loose = np.concatenate(loose_neg) if loose_neg else np.empty(0, dtype=np.int64)
    if instances and len(loose):
        _attach_to_nearest(points, instances, np.sort(loose))
    return instances, ([] if instances else sorted(int(points.fid[r]) for r in loose))


def _instance_codes(points: PointTable) -> tuple[np.ndarray, list]:
    """A code per click (equal codes: one object) and the key of each code; NULL keys get a code each."""
    codes, uniques = pd.factorize(pd.Series(points.instance, dtype=object))
    keys = list(uniques)
    null = np.flatnonzero(codes < 0)
    codes[null] = len(keys) + np.arange(len(null))
    keys.extend(points.fid[null].tolist())
    return codes, keys


def _instance(points: PointTable, index: int, key, pos_rows: np.ndarray, neg_rows: np.ndarray) -> Instance:
    first = pos_rows[np.argmin(points.fid[pos_rows])]
    return Instance(
        index=index, key=key, point_fid=int(points.fid[first]),
        pos=np.column_stack([points.x[pos_rows], points.y[pos_rows]]),
        neg=np.column_stack([points.x[neg_rows], points.y[neg_rows]]),
        cls=None if points.cls is None else points.cls[first],
        pos_fids=points.fid[pos_rows].tolist(),
        neg_fids=points.fid[neg_rows].tolist(),
    )


def _attach_to_nearest(points: PointTable, instances: list[Instance], rows: np.ndarray) -> None:
    """Each negative click in ``rows`` joins the object whose positive click is nearest (a k-d tree query)."""
    pos_xy = np.concatenate([inst.pos for inst in instances])
    owner = np.repeat(np.arange(len(instances)), [len(inst.pos) for inst in instances])
    _, nearest = cKDTree(pos_xy).query(np.column_stack([points.x[rows], points.y[rows]]))
    for inst_index, group in _groups(owner[nearest], rows):
        inst = instances[inst_index]
        inst.neg = np.vstack([inst.neg, np.column_stack([points.x[group], points.y[group]])])
        inst.neg_fids.extend(points.fid[group].tolist())


def _groups(labels: np.ndarray, rows: np.ndarray):
    """``(label, rows with that label)`` pairs, rows kept in order."""
    order = np.argsort(labels, kind="stable")
    split = np.flatnonzero(np.diff(labels[order])) + 1
    for group in np.split(order, split):
        if len(group):
            yield int(labels[group[0]]), rows[group]


SAME_AREA_FIX = "check that the layers cover the same area and that the point layer's CRS is right"


def locate_on_raster(table: PointTable, raster, points_name, raster_name) -> tuple[np.ndarray, dict]:
    """Which clicks lie on data of ``raster`` (a :class:`~pointsam_engine.raster.Raster`), and a reason for each other one.

    Returns ``(keep, reasons)``: a bool mask over the table and ``{index: "outside raster" | "on nodata"}``.
    Raises :class:`PointsError` when no click lies inside the raster at all.
    """
    on_raster, on_data = raster.on_data(table.x, table.y)
    if not on_raster.any():
        raise PointsError(f"no point of {points_name} lies inside {raster_name} (raster CRS {raster.crs.to_string()}); "
                          f"{SAME_AREA_FIX}")
    reasons = {int(i): "outside raster" for i in np.flatnonzero(~on_raster)}
    reasons.update({int(i): "on nodata" for i in np.flatnonzero(on_raster & ~on_data)})
    return on_data, reasons
