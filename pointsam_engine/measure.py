"""True areas, lengths and headings on the ellipsoid (pyproj Geod), in any CRS, geographic included."""

from __future__ import annotations

from typing import Tuple

import numpy as np
import shapely
from pyproj import CRS, Geod, Transformer


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
