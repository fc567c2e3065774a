"""Every error answers ``{"error", "message"}`` with a one-line message: FastAPI's own and the engine's."""

from __future__ import annotations

import geopandas as gpd
import pytest
import shapely

from pointsam_engine.jobs import TooLateToCancel
from tests.engine.api.support import assert_error
from tests.engine.test_output import sha256, user_geopackage


@pytest.mark.parametrize("method, path, kwargs, status, code, says", [
    ("GET", "/v1/nowhere", {}, 404, "NotFound", "no such route"),
    ("PUT", "/v1/health", {}, 405, "MethodNotAllowed", "does not take that method"),
    ("POST", "/v1/predict", {"content": b'{"raster": "\xff"}', "headers": {"Content-Type": "application/json"}},
     400, "BadRequest", "cannot be read as JSON"),
    ("POST", "/v1/predict", {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
     400, "BadRequest", "the request body is not JSON"),
    ("POST", "/v1/predict", {"json": {"positive": [[0, 0]]}}, 422, "InvalidRequest", "raster: Field required"),
    ("POST", "/v1/predict", {"content": b"x" * 2000}, 413, "BodyTooLarge", "over 1024 bytes"),
    ("GET", "/v1/jobs/nope", {}, 404, "NoSuchJob", "no job nope; list jobs with GET /v1/jobs"),
    ("DELETE", "/v1/jobs/nope", {}, 404, "NoSuchJob", "no job nope"),
])
def test_fastapis_own_errors_answer_error_and_message(api, method, path, kwargs, status, code, says):
    assert_error(api.request(method, path, **kwargs), status, code, says)


def test_a_chunked_body_over_the_cap_answers_413(api):
    chunks = (b"x" * 512 for _ in range(4))  # no Content-Length: the cap is found while reading
    assert_error(api.post("/v1/predict", content=chunks), 413, "BodyTooLarge", "over the size limit")


def test_engine_errors_answer_their_class_and_status(api, stub_engine, monkeypatch):
    def too_late(job_id):
        raise TooLateToCancel(f"job {job_id} is already writing its output")

    monkeypatch.setattr(stub_engine.jobs, "cancel", too_late)
    assert_error(api.delete("/v1/jobs/j1"), 409, "TooLateToCancel", "job j1 is already writing its output")


def test_bad_json_and_bad_paths_answer_4xx_with_one_line(server, scene, tmp_path):
    broken = server.client.post("/v1/predict", content=b"{not json", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"] == "BadRequest"
    missing = server.client.post("/v1/predict", json={"raster": "/nowhere/x.tif", "positive": [[0, 0]]})
    assert missing.status_code == 422
    body = missing.json()
    assert body["error"] == "RasterError" and "/nowhere/x.tif does not exist" in body["message"]
    assert "\n" not in body["message"]
    outside = server.client.post("/v1/predict", json={"raster": str(scene["raster"]), "positive": [[0, 0]]})
    assert outside.status_code == 422 and "outside" in outside.json()["message"]
    earlier = user_geopackage(tmp_path / "earlier.gpkg")
    gpd.GeoDataFrame({"a": [1]}, geometry=[shapely.Point(0, 0)], crs="EPSG:32633").to_file(earlier, layer="bboxes")
    digest = sha256(earlier)
    taken = server.client.post("/v1/jobs/segment", json={"raster": str(scene["raster"]), "points": str(scene["points"]),
                                                        "output": str(earlier)})
    assert taken.status_code == 409 and "has layer(s) bboxes; pass --overwrite" in taken.json()["message"]
    assert sha256(earlier) == digest
    text = tmp_path / "notes.gpkg"
    text.write_text("not a GeoPackage")
    foreign = server.client.post("/v1/jobs/segment", json={"raster": str(scene["raster"]), "points": str(scene["points"]),
                                                          "output": str(text), "overwrite": True})
    assert foreign.status_code == 409 and "not a GeoPackage" in foreign.json()["message"]
    assert text.read_text() == "not a GeoPackage"
