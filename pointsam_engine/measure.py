"""True areas, lengths and headings on the ellipsoid (pyproj Geod), in any CRS, geographic included."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import shapely
from pyproj import CRS, Geod, Transformer

from .raster import apply_affine


class Measurer:
    """Measures geometries given in ``crs`` in metres on that CRS's ellipsoid."""

    def __init__(self, crs):
        crs = CRS.from_user_input(crs)
        geographic = crs.geodetic_crs
        self._to_lonlat = Transformer.from_crs(crs, geographic, always_xy=True)
        self._geod = geographic.get_geod() or Geod(ellps="WGS84")

    def _lonlat(self, geom):
        return shapely.transform(geom, lambda xy: np.column_stack(self._to_lonlat.transform(xy[:, 0], xy[:, 1])))

    def areas(self, geoms) -> np.ndarray:
        """Geodesic area of each polygon in m² (holes subtracted).

        Geod adds the signed area of every ring, so rings are oriented first (shells counter-clockwise,
        holes clockwise); otherwise a hole wound like its shell would be added, not subtracted.
        """
        return np.array([self._geod.geometry_area_perimeter(shapely.orient_polygons(self._lonlat(g)))[0]
                         if g is not None else 0.0 for g in geoms])

    def metres_per_unit(self, x: float, y: float, step: float) -> float:
        """Ground metres one map unit spans near ``(x, y)``: the geometric mean of the east and north
        scales, measured over ``step`` map units (e.g. one pixel)."""
        lon, lat = self._to_lonlat.transform([x, x + step, x], [y, y, y + step])
        _, _, dist = self._geod.inv([lon[0], lon[0]], [lat[0], lat[0]], [lon[1], lon[2]], [lat[1], lat[2]])
        return math.sqrt(abs(dist[0] * dist[1])) / step

    def box_dimensions(self, boxes) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For rectangles: (angle_deg of the long side clockwise from north in [0, 180), length_m, width_m)."""
        angles, lengths, widths = [], [], []
        for box in boxes:
            xy = np.asarray(box.exterior.coords)[:3] if box.geom_type == "Polygon" else np.zeros((3, 2))
            lon, lat = self._to_lonlat.transform(xy[:, 0], xy[:, 1])
            az, _, dist = self._geod.inv(lon[:2], lat[:2], lon[1:3], lat[1:3])
            k = int(np.argmax(dist))
            angles.append(float(az[k]) % 180.0)
            lengths.append(float(dist[k]))
            widths.append(float(dist[1 - k]))
        return np.array(angles), np.array(lengths), np.array(widths)


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
    return Measurer(ras.crs).metres_per_unit(x, y, ras.pixel_size) * ras.pixel_size
