"""Validation figures: how much the held-out masks grew against the base model's."""

import geopandas as gpd
import numpy as np
import shapely

from training.validation import area_growth, object_areas


def test_area_growth_is_the_median_ratio_over_the_objects_both_runs_hold():
    squares = gpd.GeoDataFrame({"instance": ["a", "b", "c", "c"]},
                               geometry=[shapely.box(0, 0, 2, 2), shapely.box(0, 0, 1, 1), shapely.box(0, 0, 3, 1),
                                         shapely.box(5, 5, 6, 6)])
    areas = object_areas(squares, prefix="0:")
    assert areas == {"0:a": 4.0, "0:b": 1.0, "0:c": 4.0}  # an object's parts add up
    base = {"0:a": 2.0, "0:b": 1.0, "0:c": 1.0, "0:gone": 3.0}
    assert area_growth(areas, base) == 2.0  # ratios 2, 1, 4; "gone" has no polygon now
    assert area_growth(base, base) == 1.0
    assert np.isnan(area_growth(areas, {})) and object_areas(squares.iloc[:0], prefix="0:") == {}


def test_object_areas_are_the_engines_ground_areas_on_a_geographic_grid_without_a_warning(recwarn):
    degrees = gpd.GeoDataFrame({"instance": ["a", "b"], "area_m2": [120.0, 30.0]},
                               geometry=[shapely.box(85.5, 27.6, 85.5001, 27.6001), shapely.box(85.6, 27.6, 85.6001,
                                                                                                 27.6001)], crs=4326)
    assert object_areas(degrees) == {"a": 120.0, "b": 30.0}
    assert not [w for w in recwarn if "geographic CRS" in str(w.message)]
