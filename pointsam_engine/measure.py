"""True areas, lengths and headings on the ellipsoid (pyproj Geod), in any CRS, geographic included."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional, Tuple

import numpy as np
import shapely
from pyproj import CRS, Geod, Proj, Transformer

from .raster import apply_affine


class Measurer:
    """Measures geometries given in ``crs`` in metres on that CRS's ellipsoid."""

    def __init__(self, crs):
        crs = CRS.from_user_input(crs)
        geographic = crs.geodetic_crs
        self._to_lonlat = Transformer.from_crs(crs, geographic, always_xy=True)
        self._geod = geographic.get_geod() or Geod(ellps="WGS84")

    @classmethod
    @lru_cache(maxsize=32)
    def of(cls, crs) -> "Measurer":
        """The measurer of ``crs``, made once per CRS: making its transformer costs about as much as measuring a
        click's object (the map tool measures one object per click)."""
        return cls(crs)

    def _lonlat(self, geom):
        return shapely.transform(geom, lambda xy: np.column_stack(self._to_lonlat.transform(xy[:, 0], xy[:, 1])))

    def areas(self, geoms) -> np.ndarray:
        """Area of each polygon on the ellipsoid in m² (holes subtracted; 0 for None), for all at once.

        The polygons are projected to a Lambert azimuthal equal-area projection on this CRS's ellipsoid,
        centred on them: equal-area means every area there is the ellipsoidal area, so one vectorized
        planar area replaces a geodesic computation per polygon (the two differ only by the curvature of
        an edge between its vertices, far below a pixel for objects a few hundred metres across).
        """
        geoms = np.asarray(geoms, dtype=object).reshape(-1)
        out = np.zeros(len(geoms))
        live = ~shapely.is_missing(geoms)
        if not live.any():
            return out
        lonlat = self._lonlat(geoms[live])
        west, south, east, north = shapely.total_bounds(lonlat)
        laea = Proj(proj="laea", lat_0=(south + north) / 2, lon_0=(west + east) / 2, a=self._geod.a, b=self._geod.b)
        out[live] = shapely.area(shapely.transform(lonlat, lambda xy: np.column_stack(laea(xy[:, 0], xy[:, 1]))))
        return out

    def ground_steps(self, origins: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """Each map-unit step (Nx2) from its origin (Nx2) as a step on the ground: metres east and north."""
        origins = np.asarray(origins, dtype=float).reshape(-1, 2)
        ends = origins + np.asarray(steps, dtype=float).reshape(-1, 2)
        lon0, lat0 = self._to_lonlat.transform(origins[:, 0], origins[:, 1])
        lon1, lat1 = self._to_lonlat.transform(ends[:, 0], ends[:, 1])
        azimuth, _, dist = self._geod.inv(lon0, lat0, lon1, lat1)
        azimuth = np.radians(azimuth)
        return np.column_stack([dist * np.sin(azimuth), dist * np.cos(azimuth)])

    def metres_per_unit(self, x: float, y: float, step: float) -> float:
        """Ground metres one map unit spans near ``(x, y)``: the geometric mean of the east and north
        scales, measured over ``step`` map units (e.g. one pixel)."""
        lon, lat = self._to_lonlat.transform([x, x + step, x], [y, y, y + step])
        _, _, dist = self._geod.inv([lon[0], lon[0]], [lat[0], lat[0]], [lon[1], lon[2]], [lat[1], lat[2]])
        return math.sqrt(abs(dist[0] * dist[1])) / step

    def box_dimensions(self, boxes) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For rectangles: (angle_deg of the long side clockwise from north in [0, 180), length_m, width_m);
        zeros for anything that is not a polygon."""
        boxes = np.asarray(boxes, dtype=object).reshape(-1)
        rings = shapely.get_exterior_ring(np.where(shapely.get_type_id(boxes) == 3, boxes, None))
        corners = [shapely.get_point(rings, k) for k in range(3)]
        live = ~np.any([shapely.is_missing(c) | shapely.is_empty(c) for c in corners], axis=0)
        xy = np.zeros((3, len(boxes), 2))
        for k, corner in enumerate(corners):
            xy[k, live] = shapely.get_coordinates(corner[live])
        lon, lat = self._to_lonlat.transform(xy[..., 0], xy[..., 1])
        az, _, dist = self._geod.inv(lon[:2].ravel(), lat[:2].ravel(), lon[1:].ravel(), lat[1:].ravel())
        az, dist = az.reshape(2, -1), dist.reshape(2, -1)
        longer = np.argmax(dist, axis=0)
        pick = np.arange(len(boxes))
        angle, length, width = az[longer, pick] % 180.0, dist[longer, pick], dist[1 - longer, pick]
        for values in (angle, length, width):
            values[~live] = 0.0  # not a polygon: zeros, wherever (0, 0) falls in the CRS
        return angle, length, width


def grid_tolerances(ras, max_hole_area: Optional[float], simplify: Optional[float]) -> Tuple[float, float]:
    """The cleaning options on ``ras``'s working grid: ``max_hole_area`` (m²) as a pixel count and
    ``simplify`` (metres) in map units, at the raster's centre; None gives 25 pixels and one pixel.

    Both are ground measures whatever the CRS (on EPSG:4326, metres become degrees at the raster's
    latitude), so ``--simplify 1`` means one metre on a UTM and on a geographic raster alike.
    """
    metres = pixel_metres(ras) / ras.pixel_size
    hole_px = max_hole_area / (ras.pixel_area * metres ** 2) if max_hole_area is not None else 25.0
    tolerance = simplify / metres if simplify is not None else ras.pixel_size
    return hole_px, tolerance


def pixel_metres(ras) -> float:
    """Ground metres one pixel of ``ras``'s working grid spans, at the raster's centre (any CRS)."""
    rows, cols = ras.working_shape
    x, y = (float(v) for v in apply_affine(ras.working_transform, cols / 2, rows / 2))
    return Measurer.of(ras.crs).metres_per_unit(x, y, ras.pixel_size) * ras.pixel_size
