"""Segmentation over HTTP (a ``pointsam serve`` process): clicks, prefetch, segment jobs, evaluation."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import geopandas as gpd
import pytest
import shapely

from tests.engine.api.serve_process import scene_click, segment_report, wait_for
from tests.engine.test_output import foreign_state, sha256, user_geopackage


def test_predict_returns_the_clicked_object_and_reuses_the_chip(server, scene):
    click, truth, crs = scene_click(scene, 3)
    request = {"raster": str(scene["raster"]), "positive": [[click.x, click.y]]}
    first = server.client.post("/v1/predict", json=request)
    assert first.status_code == 200, first.text
    answer = first.json()
    polygon = shapely.geometry.shape(answer["object"]["geometry"])
    assert polygon.contains(click)
    assert shapely.intersection(polygon, truth).area / shapely.union(polygon, truth).area > 0.5
    assert shapely.geometry.shape(answer["box"]).contains(polygon.buffer(-1e-6))
    assert answer["crs"] == crs.to_string()
    near = {**request, "positive": [[click.x + 0.6, click.y - 0.6]]}
    second = server.client.post("/v1/predict", json=near).json()
    assert first.json()["chip"] == second["chip"]
    assert second["encoded"] is False, "a click near the last one must reuse the chip's embedding"


def test_predict_takes_and_answers_other_crs(server, scene):
    click, truth, crs = scene_click(scene, 5)
    from pyproj import Transformer

    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(click.x, click.y)
    answer = server.client.post("/v1/predict", json={"raster": str(scene["raster"]), "positive": [[lon, lat]],
                                                     "crs": "EPSG:4326"}).json()
    assert answer["crs"] == "EPSG:4326"
    polygon = shapely.geometry.shape(answer["object"]["geometry"])
    assert polygon.contains(shapely.Point(lon, lat))
    assert answer["object"]["properties"]["area_m2"] == pytest.approx(truth.area, rel=0.5)


def test_prefetch_encodes_ahead_of_the_click(server, scene):
    click, _, _ = scene_click(scene, 20)
    ahead = server.client.post("/v1/prefetch", json={"raster": str(scene["raster"]), "point": [click.x, click.y],
                                                     "stretch": "1,99"}).json()
    answer = server.client.post("/v1/predict", json={"raster": str(scene["raster"]), "positive": [[click.x, click.y]],
                                                     "stretch": "1,99"}).json()
    assert ahead["encoded"] is True and answer["encoded"] is False


def test_two_concurrent_predicts(server, scene):
    clicks = [scene_click(scene, i)[0] for i in (7, 30)]
    results = [None, None]

    def call(k):
        results[k] = server.client.post("/v1/predict", json={"raster": str(scene["raster"]),
                                                             "positive": [[clicks[k].x, clicks[k].y]]})

    threads = [threading.Thread(target=call, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [r.status_code for r in results] == [200, 200]
    for r, click in zip(results, clicks):
        assert shapely.geometry.shape(r.json()["object"]["geometry"]).contains(click)


def test_segment_job_reports_progress_and_writes_the_geopackage(server, scene, tmp_path):
    output = tmp_path / "out.gpkg"
    submitted = server.client.post("/v1/jobs/segment", json={"raster": str(scene["raster"]), "points": str(scene["points"]),
                                                             "output": str(output)})
    assert submitted.status_code == 202, submitted.text
    seen = wait_for(server.client, submitted.json()["id"], lambda v: v["state"] in ("succeeded", "failed", "cancelled"))
    final = seen[-1]
    assert final["state"] == "succeeded", final
    assert final["progress"] == 1.0
    progress = [v["progress"] for v in seen]
    assert progress == sorted(progress)
    assert final["result"]["output"] == str(output)
    instances = gpd.read_file(output, layer="instances")
    assert len(instances) == len(gpd.read_file(scene["points"]))
    listed = server.client.get("/v1/jobs").json()["jobs"]
    assert submitted.json()["id"] in [j["id"] for j in listed]


def test_segment_jobs_into_a_users_geopackage_keep_its_layers(server, scene, tmp_path):
    output = user_geopackage(tmp_path / "project.gpkg")
    before = foreign_state(output)
    body = {"raster": str(scene["raster"]), "points": str(scene["points"]), "output": str(output)}
    job = server.client.post("/v1/jobs/segment", json=body).json()
    final = wait_for(server.client, job["id"], lambda v: v["state"] in ("succeeded", "failed", "cancelled"))[-1]
    assert final["state"] == "succeeded", final
    assert foreign_state(output) == before
    digest = sha256(output)
    refused = server.client.post("/v1/jobs/segment", json=body)
    assert refused.status_code == 409 and "instances, boxes, bboxes, skipped" in refused.json()["message"]
    assert sha256(output) == digest
    job = server.client.post("/v1/jobs/segment", json={**body, "overwrite": True, "min_area": 1e9}).json()
    final = wait_for(server.client, job["id"], lambda v: v["state"] in ("succeeded", "failed", "cancelled"))[-1]
    assert final["state"] == "succeeded", final
    assert foreign_state(output) == before
    assert len(gpd.read_file(output, layer="instances")) == 0  # replaced: every object is under 1e9 m²


def test_segment_job_with_inline_geojson_points(server, scene, tmp_path):
    points = gpd.read_file(scene["points"]).to_crs("EPSG:4326").iloc[:5]
    output = tmp_path / "inline.gpkg"
    job = server.client.post("/v1/jobs/segment", json={"raster": str(scene["raster"]), "output": str(output),
                                                       "points_geojson": json.loads(points.to_json())}).json()
    final = wait_for(server.client, job["id"], lambda v: v["state"] in ("succeeded", "failed", "cancelled"))[-1]
    assert final["state"] == "succeeded", final
    assert len(gpd.read_file(output, layer="instances")) == 5


@pytest.fixture(scope="module")
def segmented(server, scene, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("segmented") / "scene.gpkg"
    segment_report(server.client, scene, output)
    return output


def test_evaluate_scores_a_segmentation_against_the_truth(server, scene, segmented):
    body = {"pred": str(segmented), "truth": str(scene["truth"]), "points": str(scene["points"])}
    figures = server.client.post("/v1/evaluate", json=body)
    assert figures.status_code == 200, figures.text
    scores = figures.json()
    assert scores["miou"] > 0.6 and scores["instances"] == len(gpd.read_file(scene["points"]))
    assert scores["missed_points"] == 0 and 0 <= scores["merges"] <= scores["instances"]
    on_raster = server.client.post("/v1/evaluate", json={**body, "raster": str(scene["raster"])}).json()
    assert on_raster["miou"] == pytest.approx(scores["miou"])


@pytest.mark.parametrize("change, says", [
    ({"pred": "/nowhere/p.gpkg"}, "the predictions file /nowhere/p.gpkg does not exist"),
    ({"pred_layer": "boxes2"}, "has no layer 'boxes2'; its layers: instances, boxes, bboxes, skipped"),
    ({"pred": "TRUTH", "pred_layer": "truth"}, "have no point_fid field"),
    ({"raster": "POINTS"}, "GDAL cannot read it"),
])
def test_evaluate_refuses_bad_inputs_with_one_line(server, scene, segmented, change, says):
    named = {"TRUTH": str(scene["truth"]), "POINTS": str(scene["points"])}
    body = {"pred": str(segmented), "truth": str(scene["truth"]), "points": str(scene["points"]),
            **{key: named.get(value, value) for key, value in change.items()}}
    refused = server.client.post("/v1/evaluate", json=body)
    assert refused.status_code == 422, refused.text
    assert says in refused.json()["message"] and "\n" not in refused.json()["message"]
