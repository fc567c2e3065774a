import geopandas as gpd
import numpy as np
import pytest
import shapely

from pointsam_engine.errors import PointsError
from pointsam_engine.points import group_instances, read_points
from tests.conftest import write_points


def test_reprojection_and_fields(tmp_path):
    path = write_points(tmp_path / "p.geojson", [(15.0, 36.0), (15.001, 36.001)], crs="EPSG:4326", kind=["a", "b"])
    table = read_points(path, "EPSG:32633", class_field="kind")
    assert table.x[0] == pytest.approx(500000.0, abs=0.01)  # 15°E is the zone's central meridian
    assert table.y[1] - table.y[0] == pytest.approx(111, rel=0.01)
    assert table.cls.tolist() == ["a", "b"] and table.label.tolist() == [1, 1]


def test_shapefile_fids_and_multipoints(tmp_path):
    write_points(tmp_path / "p.shp", [(1, 1), (2, 2)])
    assert read_points(tmp_path / "p.shp", "EPSG:32633").fid.tolist() == [0, 1]  # shapefile fids start at 0
    frame = gpd.GeoDataFrame({"v": [1, 2]}, geometry=[shapely.Point(1, 1), shapely.MultiPoint([(5, 5), (6, 6)])],
                             crs="EPSG:32633")
    frame.to_file(tmp_path / "p.gpkg")
    table = read_points(tmp_path / "p.gpkg", "EPSG:32633")
    assert table.fid.tolist() == [1, 2, 2]
    instances, _ = group_instances(table)
    assert [len(i.pos) for i in instances] == [1, 2]


def test_loose_negatives_attach_to_the_nearest_object():
    from pointsam_engine.points import PointTable
    table = PointTable(fid=np.arange(4), x=np.array([0.0, 100.0, 10.0, 95.0]), y=np.zeros(4),
                       label=np.array([1, 1, 0, 0], np.int8), instance=np.arange(4).astype(object), cls=None)
    instances, orphans = group_instances(table)
    assert [i.neg_fids for i in instances] == [[2], [3]] and orphans == []


def test_multi_layer_file_needs_layer(tmp_path):
    path = tmp_path / "many.gpkg"
    write_points(path, [(0, 0)], layer="a")
    write_points(path, [(1, 1)], layer="b")
    with pytest.raises(PointsError, match="2 layers .* --layer"):
        read_points(path, "EPSG:32633")
    assert read_points(path, "EPSG:32633", layer="b").x.tolist() == [1.0]
    with pytest.raises(PointsError, match="no layer 'c'"):
        read_points(path, "EPSG:32633", layer="c")


def test_point_errors(tmp_path):
    lines = gpd.GeoDataFrame(geometry=[shapely.LineString([(0, 0), (1, 1)])], crs="EPSG:32633")
    lines.to_file(tmp_path / "lines.gpkg")
    with pytest.raises(PointsError, match="LineString geometries; give a point layer"):
        read_points(tmp_path / "lines.gpkg", "EPSG:32633")
    gpd.GeoDataFrame({"a": []}, geometry=[], crs="EPSG:32633").to_file(tmp_path / "empty.gpkg", geometry_type="Point")
    with pytest.raises(PointsError, match="no features"):
        read_points(tmp_path / "empty.gpkg", "EPSG:32633")
    gpd.GeoDataFrame(geometry=[shapely.Point(0, 0)]).to_file(tmp_path / "nocrs.shp")
    with pytest.raises(PointsError, match="no CRS"):
        read_points(tmp_path / "nocrs.shp", "EPSG:32633")
    path = write_points(tmp_path / "f.gpkg", [(0, 0)], lab=[2])
    with pytest.raises(PointsError, match="'nope' is not a field.*lab"):
        read_points(path, "EPSG:32633", instance_field="nope")
    with pytest.raises(PointsError, match="use 1 for positive and 0 for negative"):
        read_points(path, "EPSG:32633", label_field="lab")


def _table(instance, label, x, y=None):
    from pointsam_engine.points import PointTable
    n = len(label)
    return PointTable(fid=np.arange(n, dtype=np.int64) + 1, x=np.asarray(x, float),
                      y=np.zeros(n) if y is None else np.asarray(y, float),
                      label=np.asarray(label, np.int8), instance=np.asarray(instance, dtype=object), cls=None)


def test_clicks_with_an_empty_instance_field_are_objects_of_their_own():
    nan = float("nan")
    table = _table(["a", nan, "a", nan, None], [1, 1, 1, 1, 0], [0.0, 50.0, 2.0, 90.0, 88.0])
    instances, orphans = group_instances(table)
    assert [i.pos_fids for i in instances] == [[1, 3], [2], [4]]  # no object twice, NULL clicks not merged
    assert [i.neg_fids for i in instances] == [[], [], [5]] and orphans == []


def test_grouping_matches_a_per_key_scan_on_random_layers():
    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(1, 80))
        table = _table(rng.integers(0, 10, n), rng.random(n) < 0.7, rng.random(n) * 100, rng.random(n) * 100)
        instances, orphans = group_instances(table)
        keys = list(dict.fromkeys(table.instance.tolist()))
        with_pos = [k for k in keys if ((table.instance == k) & (table.label == 1)).any()]
        assert [i.key for i in instances] == with_pos
        for inst in instances:
            own = (table.instance == inst.key)
            assert inst.pos_fids == table.fid[own & (table.label == 1)].tolist()
        loose = [r for r in range(n) if table.label[r] == 0 and table.instance[r] not in with_pos]
        for row in loose:  # each loose negative joined the object of the nearest positive click
            d = [np.min(np.hypot(*(i.pos - [table.x[row], table.y[row]]).T)) for i in instances]
            holder = next(i for i in instances if table.fid[row] in i.neg_fids)
            assert np.isclose(np.min(np.hypot(*(holder.pos - [table.x[row], table.y[row]]).T)), min(d))
        assert orphans == ([] if instances else sorted(table.fid[loose].tolist()))
