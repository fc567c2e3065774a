"""Generated scenes with ground truth: georeferenced GeoTIFF, truth polygons and one click per object.

Two kinds, deterministic by seed:

- ``buildings``: optical RGB uint8 at ~0.3 m: blocks of rectangular and L-shaped roofs in rows with
  touching neighbours, varied roof colours and textures, shadows on one side, roads, trees, textured ground.
  Above density 1, a share ``density - 1`` of the rows are terraces: houses wall to wall under one roof
  colour and style, told apart only by faint party walls, where a single click is easily taken for the
  whole row (the case negative prompt calibration is for).
- ``ships``: SAR-like single-band float32 amplitude at ~1.5 m: gamma speckle sea, bright hulls of varied
  length and heading, several moored side by side along a quay, some in open water, a bright land area.

Clicks are where a person would click: inside the object, away from its edge, jittered, not the centroid.
Everything is drawn in pixel coordinates and georeferenced at the end, so truth and image agree exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize
from scipy import ndimage

from ..output import GPKG_VERSION, atomic_path
from ..raster import apply_affine
from ..vectorize import to_map

KINDS = ("buildings", "ships")
DEFAULT_RESOLUTION = {"buildings": 0.3, "ships": 1.5}


@dataclass
class Scene:
    """A drawn scene in pixel space: ``image`` (bands, rows, cols), ``labels`` (0 background, i+1 object i)."""

    kind: str
    image: np.ndarray
    labels: np.ndarray
    polygons: List  # shapely polygons, pixel coordinates (x = column, y = row)
    clicks: np.ndarray  # (N, 2) x, y pixel coordinates, one per polygon
    transform: Affine
    crs: str

    def polygons_map(self) -> np.ndarray:
        """Truth polygons in map coordinates."""
        return to_map(self.polygons, self.transform)

    def clicks_map(self) -> np.ndarray:
        """Clicks in map coordinates, (N, 2) x, y."""
        return np.column_stack(apply_affine(self.transform, self.clicks[:, 0], self.clicks[:, 1]))


def render(kind: str, size: int = 1024, *, resolution: Optional[float] = None, density: float = 1.0,
           crs: str = "EPSG:32633", origin: Tuple[float, float] = (500000.0, 4000000.0), seed: int = 0) -> Scene:
    """Draw a scene of ``size`` x ``size`` pixels (in memory)."""
    if kind not in KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; use one of {', '.join(KINDS)}")
    res = resolution or DEFAULT_RESOLUTION[kind]
    rng = np.random.default_rng(seed)
    draw = _draw_buildings if kind == "buildings" else _draw_ships
    image, polygons = draw(size, res, density, rng)
    labels = _label_raster(polygons, size)
    clicks = np.array([_click(p, rng) for p in polygons]).reshape(-1, 2)
    transform = Affine(res, 0.0, origin[0], 0.0, -res, origin[1])
    return Scene(kind, image, labels, polygons, clicks, transform, crs)


def write_scene(scene: Scene, folder, name: Optional[str] = None) -> dict:
    """Write ``<name>.tif``, ``<name>_truth.gpkg`` (layer ``truth``) and ``<name>_points.gpkg`` (layer ``points``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = name or scene.kind
    bands, rows, cols = scene.image.shape
    tif = folder / f"{name}.tif"
    with atomic_path(tif, ".tif") as tmp, rasterio.open(
            tmp, "w", driver="GTiff", width=cols, height=rows, count=bands, dtype=scene.image.dtype, crs=scene.crs,
            transform=scene.transform, tiled=True, blockxsize=256, blockysize=256, compress="deflate",
            photometric="RGB" if bands == 3 else "MINISBLACK") as dst:
        dst.write(scene.image)
    ids = np.arange(1, len(scene.polygons) + 1)
    truth = _write_layer(gpd.GeoDataFrame({"object_id": ids}, geometry=scene.polygons_map(), crs=scene.crs),
                         folder / f"{name}_truth.gpkg", "truth")
    points = _write_layer(gpd.GeoDataFrame({"object_id": ids}, geometry=shapely.points(scene.clicks_map()),
                                           crs=scene.crs), folder / f"{name}_points.gpkg", "points")
    return {"raster": tif, "truth": truth, "points": points}


def _write_layer(frame: gpd.GeoDataFrame, path: Path, layer: str) -> Path:
    """``frame`` as the only layer ``layer`` of a new GeoPackage at ``path`` (replacing any file there)."""
    with atomic_path(path, ".gpkg") as tmp:
        frame.to_file(tmp, layer=layer, driver="GPKG", engine="pyogrio", dataset_options={"VERSION": GPKG_VERSION})
    return path


def generate(kind: str, folder, *, size: int = 1024, seed: int = 0, name: Optional[str] = None, **options) -> dict:
    """Draw a scene and write its three files; returns their paths."""
    return write_scene(render(kind, size, seed=seed, **options), folder, name)


# -- shared drawing helpers ------------------------------------------------------------------------

def _label_raster(polygons, size: int) -> np.ndarray:
    if not polygons:
        return np.zeros((size, size), np.int32)
    return rasterize(((p, i + 1) for i, p in enumerate(polygons)), out_shape=(size, size), dtype="int32",
                     transform=Affine.identity())


def _click(polygon, rng: np.random.Generator) -> Tuple[float, float]:
    """A click inside the object, away from its edge, jittered the way a person clicks."""
    minx, miny, maxx, maxy = polygon.bounds
    inner = polygon.buffer(-0.25 * min(maxx - minx, maxy - miny))
    target = inner if not inner.is_empty else polygon
    tminx, tminy, tmaxx, tmaxy = target.bounds
    for _ in range(200):
        x, y = rng.uniform(tminx, tmaxx), rng.uniform(tminy, tmaxy)
        if target.contains(shapely.Point(x, y)):
            return float(x), float(y)
    point = polygon.representative_point()
    return float(point.x), float(point.y)


def _smooth_noise(size: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-ish noise with features about ``scale`` pixels across."""
    noise = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), scale)
    return noise / (noise.std() + 1e-9)


def _mask(geom, size: int):
    """``(rows, cols)`` of the pixels a polygon covers (pixel coordinates), rasterized in its own window."""
    minx, miny, maxx, maxy = geom.bounds
    c0, r0 = max(int(np.floor(minx)), 0), max(int(np.floor(miny)), 0)
    c1, r1 = min(int(np.ceil(maxx)) + 1, size), min(int(np.ceil(maxy)) + 1, size)
    if c1 <= c0 or r1 <= r0:
        return np.zeros(0, int), np.zeros(0, int)
    local = rasterize([(geom, 1)], out_shape=(r1 - r0, c1 - c0), dtype="uint8",
                      transform=Affine.translation(c0, r0)).astype(bool)
    rows, cols = np.nonzero(local)
    return rows + r0, cols + c0


def _paint(canvas: np.ndarray, geom, colour, size: int):
    """Paint a polygon (pixel coordinates) into an (H, W, C) canvas; returns its pixels."""
    pixels = _mask(geom, size)
    canvas[pixels] = colour
    return pixels


# -- buildings -------------------------------------------------------------------------------------

ROOF_COLOURS = np.array([[178, 80, 60], [150, 150, 150], [196, 190, 180], [90, 110, 150], [120, 70, 50],
                         [210, 210, 215], [160, 120, 90], [70, 80, 90]], float)


def _draw_buildings(size: int, res: float, density: float, rng: np.random.Generator):
    ground = np.array([118, 112, 88], float) + 14 * _smooth_noise(size, 12, rng)[..., None] \
        + rng.normal(0, 6, (size, size, 3))
    canvas = ground
    road_w = max(4, int(round(7 / res)))
    block = int(round(rng.uniform(45, 60) / res))
    roads = []
    offset = int(rng.integers(0, block))
    for start in range(offset - block, size + block, block + road_w):
        roads.append(shapely.box(start, -1, start + road_w, size + 1))
    offset = int(rng.integers(0, block))
    for start in range(offset - block, size + block, block + road_w):
        roads.append(shapely.box(-1, start, size + 1, start + road_w))
    road = shapely.union_all(roads)
    _paint(canvas, road, np.array([92, 92, 96]) + rng.normal(0, 4, 3), size)
    roofs = []  # (polygon, terrace style or None)
    for bx in range(offset - block, size + block, block + road_w):
        for by in range(offset - block, size + block, block + road_w):
            cell = shapely.box(bx + road_w + 2, by + road_w + 2, bx + road_w + block - 2, by + road_w + block - 2)
            roofs.extend(_block_of_roofs(cell, res, density, rng))
    roofs = [(p, style) for p, style in roofs if p.within(shapely.box(0, 0, size, size))]
    polygons = [p for p, _ in roofs]
    for _ in range(int(density * size * size * res * res / 400)):  # trees on open ground
        x, y = rng.uniform(0, size, 2)
        tree = shapely.Point(x, y).buffer(rng.uniform(1.5, 3.5) / res)
        if not any(tree.intersects(p) for p in polygons):
            pixels = _paint(canvas, tree, np.array([48, 82, 40]) + rng.normal(0, 6, 3), size)
            canvas[pixels] += rng.normal(0, 10, (len(pixels[0]), 3))
    sun = np.array([1.0, 1.0]) * max(2, int(round(1.5 / res)))  # shadows fall to the lower right
    for poly in polygons:
        canvas[_mask(shapely.affinity.translate(poly, *sun), size)] *= 0.55
    for poly, style in roofs:
        _roof(canvas, poly, size, res, rng, style)
    return np.clip(canvas, 0, 255).astype(np.uint8).transpose(2, 0, 1), polygons


def _block_of_roofs(cell, res: float, density: float, rng: np.random.Generator) -> list:
    """Rows of roofs filling a block, neighbours often touching: ``(polygon, terrace style or None)``."""
    minx, miny, maxx, maxy = cell.bounds
    out = []
    depth = rng.uniform(8, 14) / res
    y = miny
    while y + depth <= maxy:
        # drawn only above density 1, so scenes at density <= 1 keep their random stream
        terrace = _terrace_style(rng) if density > 1 and rng.random() < density - 1 else None
        x = minx + rng.uniform(0, 3) / res
        while True:
            width = rng.uniform(7, 16) / res
            if x + width > maxx:
                break
            if terrace is not None:
                out.append((shapely.box(x, y, x + width, y + depth), terrace))
                x += width
                continue
            if rng.random() < density * 0.9:
                roof = shapely.box(x, y, x + width, y + depth)
                if rng.random() < 0.3:  # L-shape: cut a corner away
                    cx, cy = rng.uniform(0.35, 0.6) * width, rng.uniform(0.35, 0.6) * depth
                    corner = rng.integers(4)
                    ox = x if corner in (0, 2) else x + width - cx
                    oy = y if corner in (0, 1) else y + depth - cy
                    roof = roof.difference(shapely.box(ox, oy, ox + cx, oy + cy))
                out.append((shapely.Polygon(roof.exterior.coords), None))
            x += width + (0 if rng.random() < 0.6 else rng.uniform(1, 3) / res)  # touching or a small gap
        y += depth + rng.uniform(1.5, 4) / res
    return out


TERRACE_WALL = 0.93  # party walls: much fainter than a free-standing roof's eave line (0.8)


def _terrace_style(rng: np.random.Generator) -> dict:
    """One roof colour and finish for a whole terrace (its ridge runs along the row)."""
    return {"colour": ROOF_COLOURS[rng.integers(len(ROOF_COLOURS))] + rng.normal(0, 12, 3),
            "stripes": bool(rng.random() < 0.5)}


def _roof(canvas: np.ndarray, poly, size: int, res: float, rng: np.random.Generator, style: Optional[dict] = None) -> None:
    minx, miny, maxx, maxy = (int(v) for v in poly.bounds)
    rows, cols = _mask(poly, size)
    shade = np.ones(len(rows))
    if style is None:  # a house of its own: colour and style drawn for it
        colour = ROOF_COLOURS[rng.integers(len(ROOF_COLOURS))] + rng.normal(0, 12, 3)
        stripes = rng.random() < 0.5
        stripes_along_cols = stripes and rng.random() < 0.5
        gabled = rng.random() < 0.6
        ridge_along_x = maxx - minx > maxy - miny
        edge = 0.8
    else:
        colour, stripes, gabled, edge = style["colour"], style["stripes"], True, TERRACE_WALL
        stripes_along_cols, ridge_along_x = False, True
    if stripes:  # corrugated metal
        period = max(2, int(round(0.6 / res)))
        shade *= np.where(((cols if stripes_along_cols else rows) // period) % 2 == 0, 1.08, 0.92)
    if gabled:  # a ridge, one side darker
        if ridge_along_x:
            shade *= np.where(rows < (miny + maxy) / 2, 1.0, 0.85)
        else:
            shade *= np.where(cols < (minx + maxx) / 2, 1.0, 0.85)
    canvas[rows, cols] = colour * shade[:, None] + rng.normal(0, 5, (len(rows), 3))
    boundary = poly.exterior.buffer(0.6)  # a darker eave line, as roofs show from above
    canvas[_mask(boundary.intersection(poly), size)] *= edge


# -- ships -----------------------------------------------------------------------------------------

def _hull(cx: float, cy: float, length: float, width: float, heading: float):
    """A hull outline: a box with a pointed bow, ``heading`` in radians (pixel coordinates)."""
    half_l, half_w = length / 2, width / 2
    bow = 0.18 * length
    pts = [(-half_l, -half_w), (half_l - bow, -half_w), (half_l, 0), (half_l - bow, half_w), (-half_l, half_w)]
    c, s = math.cos(heading), math.sin(heading)
    return shapely.Polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts])


def _draw_ships(size: int, res: float, density: float, rng: np.random.Generator):
    looks = 4.0
    amplitude = np.sqrt(rng.gamma(looks, 1 / looks, (size, size))) * 0.08  # speckled sea
    amplitude *= np.exp(0.15 * _smooth_noise(size, 40, rng))
    # land along one edge, a straight quay line in front of it
    land_depth = int(size * rng.uniform(0.15, 0.25))
    land = np.zeros((size, size), bool)
    land[:, :land_depth] = True
    amplitude[land] = np.sqrt(rng.gamma(looks, 1 / looks, land.sum())) * 0.5 * np.exp(0.5 * _smooth_noise(size, 6, rng)[land])
    amplitude[:, land_depth - max(1, int(3 / res)):land_depth] *= 3.0  # the quay wall
    polygons = []
    # moored side by side along the quay, bows all one way
    y = rng.uniform(10, 40) / res
    x0 = land_depth + rng.uniform(0.5, 2) / res
    n_moored = int(rng.integers(4, 9) * density)
    for _ in range(n_moored):
        length, width = rng.uniform(50, 140) / res, 0
        width = length / rng.uniform(5.5, 8)
        col_x = x0
        for _ in range(int(rng.integers(1, 4))):  # rafted: up to three abreast
            hull = _hull(col_x + width / 2, y + length / 2, length, width, math.pi / 2)
            if hull.within(shapely.box(0, 0, size, size)):
                polygons.append(hull)
            col_x += width + rng.uniform(0, 1.5) / res
        y += length + rng.uniform(5, 30) / res
        if y > size - 20:
            break
    # open water
    free = shapely.box(land_depth + 0.25 * size, 0, size, size).buffer(-20)
    taken = shapely.union_all(polygons).buffer(10 / res) if polygons else shapely.Polygon()
    for _ in range(int(rng.integers(4, 10) * density) * 5):
        if len(polygons) >= n_moored * 3 + int(10 * density):
            break
        length = rng.uniform(30, 200) / res
        hull = _hull(*rng.uniform(0, size, 2), length, length / rng.uniform(5, 8), rng.uniform(0, math.pi))
        if hull.within(free) and not hull.intersects(taken):
            polygons.append(hull)
            taken = taken.union(hull.buffer(10 / res))
    for hull in polygons:
        rows, cols = _mask(hull, size)
        brightness = rng.uniform(0.6, 1.4)
        amplitude[rows, cols] = brightness * np.sqrt(rng.gamma(2.0, 0.5, len(rows))) * np.exp(0.3 * rng.normal(size=len(rows)))
        hot = rng.choice(len(rows), size=max(1, len(rows) // 60), replace=False)  # bright scatterers
        amplitude[rows[hot], cols[hot]] *= rng.uniform(2, 5, len(hot))
    return amplitude[None].astype(np.float32), polygons
