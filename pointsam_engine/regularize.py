"""Outlines an analyst keeps: regularized building footprints and smoothed ship hulls.

``buildings``: right angles, edges aligned to the footprint's dominant direction (and rotated onto the
neighbours' direction where it is within 10°), notches narrower than two pixels removed, holes below the
hole threshold filled. The edge work is the field's maintained library, ``buildingregulariser`` (the one
samgeo and TerraLab use), run without 45° edges and without circles; this module only chooses its
tolerances from the pixel size, removes notches first and puts the footprints back together afterwards.

``ships``: the staircase smoothed to the hull (corner cutting), kept inside the mask's oriented box, so the
``boxes`` layer is the one the mask gives.

Regularization moves edges, so neighbours can come to overlap. Where two outlines overlap, the overlap
goes whole to the object whose mask held more of it: the pixels were already given to the higher logit
when the masks were settled, so this is the same rule; an overlap neither mask held goes to the higher
score. The loser's edge then runs along the winner's straight edge, so the shared wall stays straight and
shared. Each outline's IoU with its mask is returned so analysts can filter the ones moved most.

Geometry is worked in a metric, conformal frame (a transverse Mercator centred on the data when the CRS
is geographic), where a right angle on the ground is a right angle in coordinates.
"""

from __future__ import annotations

import threading
import warnings
from contextlib import contextmanager
from typing import Iterator, Tuple

import geopandas as gpd
import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely import affinity

from .measure import Measurer
from .vectorize import oriented_boxes, overlapping, polygonal

MODES = ("none", "buildings", "ships")
_ALIGNMENT_LOCK = threading.Lock()
NOTCH_PX = 1.0  # notches and spikes up to two pixels wide are removed (a morphological closing and opening)
JOG_PX = 3.0  # walls closer than three pixels are put on one line
WALL_PX = 2.0  # neighbours that shared a wall in their masks and lie closer than this share it again


def regularize(geoms: np.ndarray, masks: np.ndarray, scores: np.ndarray, mode: str, crs, pixel_m: float,
               min_hole_m2: float = 0.0, settle: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Regularized outlines of ``geoms`` and each one's IoU with its mask.

    Args:
        geoms: the vectorized outlines (polygons in ``crs``; neighbours do not overlap).
        masks: each object's traced mask (the same objects, polygons in ``crs``).
        scores: each object's score; breaks ties when an overlap lies outside both masks.
        mode: ``none``, ``buildings`` or ``ships``.
        crs: the CRS of the geometries.
        pixel_m: the raster's pixel size on the ground (metres).
        min_hole_m2: holes smaller than this (m²) are filled.
        settle: give overlaps to one object (off when the run keeps overlaps).
    Returns:
        ``(outlines, iou_to_mask)``; with ``none`` the outlines are ``geoms``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown regularize mode {mode!r}; use one of {', '.join(MODES)}")
    geoms = np.asarray(geoms, dtype=object)
    masks = np.asarray(masks, dtype=object)
    if mode == "none" or len(geoms) == 0:
        return geoms, iou(geoms, masks)
    to_frame, from_frame, metres = _metric_frame(crs, geoms)
    local, local_masks = to_frame(geoms), to_frame(masks)
    px = pixel_m / metres
    if mode == "buildings":
        out = regularize_buildings(local, px, min_hole_m2 / metres ** 2)
    else:
        out = smooth_hulls(local, px)
    if settle:
        out = settle_overlaps(out, local_masks, scores)
    if settle and mode == "buildings":
        out = settle_overlaps(share_walls(out, local_masks, scores, WALL_PX * px), local_masks, scores)
    return from_frame(out), iou(out, local_masks)


def regularize_buildings(geoms: np.ndarray, pixel: float, min_hole_area: float = 0.0) -> np.ndarray:
    """Right-angled footprints with ``buildingregulariser`` (metric, conformal coordinates; ``pixel`` in them)."""
    from buildingregulariser import regularize_geodataframe

    jog = JOG_PX * pixel
    cleaned = np.array([_without_notches(g, NOTCH_PX * pixel) for g in geoms], dtype=object)
    live = np.flatnonzero([g is not None for g in cleaned])
    out = np.array(geoms, dtype=object)
    if len(live) == 0:
        return out
    frame = gpd.GeoDataFrame({"object": live}, geometry=list(cleaned[live]))
    with warnings.catch_warnings(), _neighbour_alignment_in_process():
        warnings.simplefilter("ignore")  # it warns, and keeps the input, when an outline cannot be regularized
        done = regularize_geodataframe(
            frame, parallel_threshold=2 * pixel, simplify=True, simplify_tolerance=2 * pixel,
            allow_45_degree=False, allow_circles=False, num_cores=1,  # no process pool inside a server
            neighbor_alignment=True, neighbor_search_distance=10 * pixel, neighbor_max_rotation=10)
    for obj, part in done.groupby("object").geometry:
        shape = polygonal(shapely.union_all([_without_jogs(p, jog) for p in part.values]))
        if shape is not None:
            out[obj] = _fill_holes(_same_area(shape, geoms[obj], 2 * pixel), min_hole_area)
    return out


def _same_area(shape, mask, most: float):
    """``shape`` moved out (or in) along its normals, square corners kept, to the mask's area.

    The library fits its edges through a simplified staircase whose corners are cut, so its outlines sit
    about a pixel inside the mask (8 % of the area of a 10 m house at 0.3 m); one mitred offset of
    (mask area - area) / perimeter, at most ``most``, puts the walls back where the mask had them.
    """
    offset = float(np.clip((mask.area - shape.area) / max(shape.length, 1e-12), -most, most))
    moved = polygonal(shape.buffer(offset, join_style="mitre", mitre_limit=5.0)) if offset else shape
    return moved if moved is not None and not moved.is_empty else shape


def _without_jogs(polygon, width: float):
    """A right-angled polygon with walls less than ``width`` apart (jogs, shallow notches) moved onto one line.

    In the frame of the polygon's longest edge every edge runs along x or y; the positions of the walls along
    each axis are grouped where consecutive ones lie within ``width`` and each group takes its length-weighted
    mean. What the library leaves as a staircase of small offsets becomes one straight wall.
    """
    if polygon is None or polygon.is_empty or width <= 0:
        return polygon
    xy = np.asarray(polygon.exterior.coords)
    d = np.diff(xy, axis=0)
    k = int(np.argmax(np.hypot(d[:, 0], d[:, 1])))
    angle = np.degrees(np.arctan2(d[k, 1], d[k, 0]))
    origin = tuple(xy[0])
    flat = affinity.rotate(polygon, -angle, origin=origin)
    rings = [_snap_ring(np.asarray(r.coords), width) for r in (flat.exterior, *flat.interiors)]
    if len(rings[0]) < 4:  # the ring collapsed: nothing but jogs
        return polygon
    snapped = polygonal(shapely.Polygon(rings[0], [r for r in rings[1:] if len(r) >= 4]))
    if snapped is None or snapped.area < 0.5 * polygon.area:
        return polygon
    snapped = shapely.simplify(shapely.remove_repeated_points(snapped, 1e-9 * width), 1e-6 * width)
    return affinity.rotate(snapped, angle, origin=origin)


def _snap_ring(closed: np.ndarray, width: float) -> np.ndarray:
    xy = closed[:-1].copy()
    n = len(xy)
    d = np.roll(xy, -1, axis=0) - xy  # edge k runs from vertex k to vertex k + 1 (mod n)
    for axis in (0, 1):  # axis 0: vertical walls (their x); axis 1: horizontal walls (their y)
        where = np.flatnonzero(np.abs(d[:, 1 - axis]) >= np.abs(d[:, axis]))
        if not len(where):
            continue
        pos = 0.5 * (xy[where, axis] + xy[(where + 1) % n, axis])
        length = np.abs(d[where, 1 - axis]) + 1e-12
        order = np.argsort(pos)
        group = np.concatenate([[0], np.cumsum(np.diff(pos[order]) > width)])
        mean = np.bincount(group, pos[order] * length[order]) / np.bincount(group, length[order])
        new = np.empty_like(pos)
        new[order] = mean[group]
        xy[where, axis] = new
        xy[(where + 1) % n, axis] = new
    xy = np.vstack([xy, xy[:1]])
    ring = xy[:-1][np.r_[True, np.any(np.abs(np.diff(xy[:-1], axis=0)) > 1e-9 * width, axis=1)]]
    a, b = np.roll(ring, 1, axis=0) - ring, np.roll(ring, -1, axis=0) - ring
    turn = np.abs(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]) > 1e-9 * width ** 2  # drop straight-through vertices
    ring = ring[turn] if turn.sum() >= 3 else ring
    return np.vstack([ring, ring[:1]])


def smooth_hulls(geoms: np.ndarray, pixel: float, rounds: int = 3) -> np.ndarray:
    """Each outline's staircase smoothed by corner cutting (Chaikin), inside the outline's oriented box."""
    out = []
    for geom in geoms:
        if geom is None:
            out.append(None)
            continue
        box = oriented_boxes(np.array([geom], dtype=object))[0]
        parts = [_chaikin(shapely.simplify(p, 0.5 * pixel), rounds) for p in shapely.get_parts(geom)]
        parts = [shapely.simplify(p, 0.2 * pixel) for p in parts if p is not None]  # within a fifth of a pixel of the curve
        smooth = polygonal(shapely.union_all(parts))
        out.append(polygonal(smooth.intersection(box)) if smooth is not None else geom)
    return np.array(out, dtype=object)


def settle_overlaps(geoms: np.ndarray, masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Where two outlines overlap, the overlap goes to the one whose mask held more of it (then the higher score)."""
    geoms = np.array(geoms, dtype=object)
    for i, j in overlapping(geoms):
        if geoms[i] is None or geoms[j] is None:
            continue
        shared = geoms[i].intersection(geoms[j])
        held_i, held_j = (shared.intersection(masks[k]).area if masks[k] is not None else 0.0 for k in (i, j))
        i_wins = held_i > held_j or (held_i == held_j and scores[i] >= scores[j])
        loser, winner = (j, i) if i_wins else (i, j)
        geoms[loser] = polygonal(geoms[loser].difference(geoms[winner]))
    return geoms


def share_walls(geoms: np.ndarray, masks: np.ndarray, scores: np.ndarray, width: float) -> np.ndarray:
    """Neighbours whose masks shared a wall get one wall again: the lower-scored outline's vertices within
    ``width`` of the other's outline are snapped onto it (overlaps this makes are settled after)."""
    geoms = np.array(geoms, dtype=object)
    live = np.flatnonzero([g is not None and m is not None for g, m in zip(geoms, masks)])
    if len(live) < 2:
        return geoms
    left, right = shapely.STRtree(masks[live]).query(masks[live], predicate="touches")
    for a, b in zip(live[left], live[right]):
        if a < b and geoms[a].distance(geoms[b]) < width:
            loser, winner = (a, b) if scores[a] < scores[b] else (b, a)
            geoms[loser] = polygonal(shapely.snap(geoms[loser], geoms[winner], width)) or geoms[loser]
    return geoms


def iou(geoms: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """IoU of each outline with its mask (0 where either is missing)."""
    geoms, masks = np.asarray(geoms, dtype=object), np.asarray(masks, dtype=object)
    if len(geoms) == 0:
        return np.zeros(0)
    inter = np.nan_to_num(shapely.area(shapely.intersection(geoms, masks)))
    union = np.nan_to_num(shapely.area(geoms)) + np.nan_to_num(shapely.area(masks)) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def right_angle_share(geoms, tolerance_deg: float = 10.0) -> float:
    """Share of the corners of all rings within ``tolerance_deg`` of 90° (straight-through vertices skipped)."""
    right = total = 0
    for geom in geoms:
        for ring in _rings(geom):
            xy = np.asarray(ring.coords)[:-1]
            if len(xy) < 3:
                continue
            a, b = np.roll(xy, 1, axis=0) - xy, np.roll(xy, -1, axis=0) - xy
            cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
            angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
            corner = angle < 175.0
            right += int((np.abs(angle[corner] - 90) <= tolerance_deg).sum())
            total += int(corner.sum())
    return right / total if total else float("nan")


def vertex_counts(geoms) -> np.ndarray:
    """Distinct vertices per geometry (each ring's closing vertex not counted)."""
    return np.array([sum(len(r.coords) - 1 for r in _rings(g)) for g in geoms])


def _rings(geom):
    if geom is None:
        return []
    return [ring for p in shapely.get_parts(geom) for ring in (p.exterior, *p.interiors)]


def _without_notches(geom, width: float):
    """Close then open with a square, mitred buffer: notches and spikes up to ``2 * width`` go, corners stay square."""
    if geom is None:
        return None
    kw = {"join_style": "mitre", "mitre_limit": 5.0}
    cleaned = polygonal(geom.buffer(width, **kw).buffer(-2 * width, **kw).buffer(width, **kw))
    return cleaned if cleaned is not None and cleaned.area > 0.5 * geom.area else geom


def _fill_holes(geom, min_area: float):
    if min_area <= 0:
        return geom
    parts = [shapely.Polygon(p.exterior, [r for r in p.interiors if shapely.Polygon(r).area >= min_area])
             for p in shapely.get_parts(geom)]
    return polygonal(shapely.union_all(parts))


def _chaikin(polygon, rounds: int):
    """Chaikin corner cutting of each ring (stays inside the ring's convex hull), or None if degenerate."""
    if polygon is None or polygon.is_empty:
        return None
    rings = [_chaikin_ring(np.asarray(r.coords)[:-1], rounds) for r in (polygon.exterior, *polygon.interiors)]
    if len(rings[0]) < 4:
        return polygon
    return polygonal(shapely.Polygon(rings[0], [r for r in rings[1:] if len(r) >= 4]))


def _chaikin_ring(xy: np.ndarray, rounds: int) -> np.ndarray:
    for _ in range(rounds):
        nxt = np.roll(xy, -1, axis=0)
        xy = np.column_stack([0.75 * xy + 0.25 * nxt, 0.25 * xy + 0.75 * nxt]).reshape(-1, 2)
    return np.vstack([xy, xy[:1]])


def _metric_frame(crs, geoms: np.ndarray):
    """``(to_frame, from_frame, metres)``: transforms of geometry arrays into a conformal frame and back, and the
    ground metres one frame unit spans. A projected CRS is kept (its units may be feet, or stretched as Web
    Mercator's are); a geographic one goes to a transverse Mercator in metres centred on the data."""
    crs = CRS.from_user_input(crs) if crs is not None else None
    live = [g for g in geoms if g is not None]
    x, y = shapely.centroid(shapely.union_all(live)).coords[0] if live else (0.0, 0.0)
    if crs is None or not crs.is_geographic:
        def same(g):
            return np.asarray(g, dtype=object)

        return same, same, Measurer(crs).metres_per_unit(x, y, 1.0) if crs is not None else 1.0
    local = CRS.from_proj4(f"+proj=tmerc +lat_0={y} +lon_0={x} +k=1 +x_0=0 +y_0=0 +ellps=WGS84 +units=m")

    def move(source, target):
        transformer = Transformer.from_crs(source, target, always_xy=True)
        return lambda g: shapely.transform(np.asarray(g, dtype=object),
                                           lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))

    return move(crs, local), move(local, crs), 1.0


class _InProcessPool:
    """Stands in for ``multiprocessing.Pool`` in buildingregulariser's neighbour alignment: maps in this process."""

    def __init__(self, processes=None):
        pass

    def __enter__(self) -> "_InProcessPool":
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def map(self, function, items, chunksize=None) -> list:
        return list(map(function, items))


@contextmanager
def _neighbour_alignment_in_process() -> Iterator[None]:
    """buildingregulariser's neighbour alignment forks a process pool even when asked for one core (its
    coordinator does not); a fork inside the engine's threaded server can deadlock (a segment job hung in
    ``Pool.terminate``), so while the engine regularizes, that step maps in this process."""
    from buildingregulariser import neighbor_alignment

    with _ALIGNMENT_LOCK:
        pool, neighbor_alignment.Pool = neighbor_alignment.Pool, _InProcessPool
        try:
            yield
        finally:
            neighbor_alignment.Pool = pool
