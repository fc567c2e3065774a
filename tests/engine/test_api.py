"""``pointsam serve`` as a real uvicorn process on a loopback port, called over HTTP with httpx."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import geopandas as gpd
import httpx
import numpy as np
import pytest
import shapely

from pointsam_engine.scenes import generate

from ..conftest import write_points, write_raster
from .test_output import foreign_state, sha256, user_geopackage

STARTUP_SECONDS = 120


class Server:
    """A ``pointsam serve`` child process and an authorised client for it."""

    def __init__(self, folder: Path, *extra: str):
        self.connection_file = folder / "serve.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "pointsam_engine.cli", "serve", "--port", "0",
                                      "--cache-mb", "64", "--connection-file", str(self.connection_file), *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.info = json.loads(self._first_line())
        self.url, self.token = self.info["url"], self.info["token"]
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=120)

    def _first_line(self) -> str:
        box = {}
        reader = threading.Thread(target=lambda: box.setdefault("line", self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(STARTUP_SECONDS)
        if not box.get("line"):
            self.proc.kill()
            raise RuntimeError(f"pointsam serve did not start: {self.proc.stderr.read()}")
        return box["line"]

    def stop(self) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api_scene")
    return generate("buildings", folder, size=384, seed=41077)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("api_server"))
    yield srv
    assert srv.stop() == 0
    assert not srv.connection_file.exists(), "the connection file outlived the server"


@pytest.fixture(scope="module")
def long_job_inputs(tmp_path_factory):
    """A raster and a grid of clicks that take many chips: long enough to cancel part-way."""
    folder = tmp_path_factory.mktemp("long_job")
    rng = np.random.default_rng(0)
    raster = write_raster(folder / "noise.tif", rng.integers(0, 255, (3, 3072, 3072), dtype=np.uint8))
    xy = [(500000.0 + 0.5 * c, 4000000.0 - 0.5 * r) for r in range(100, 3072, 200) for c in range(100, 3072, 200)]
    points = write_points(folder / "grid.gpkg", xy)
    return raster, points


def _click(scene_paths, index=0):
    pts = gpd.read_file(scene_paths["points"])
    truth = gpd.read_file(scene_paths["truth"])
    return pts.geometry.iloc[index], truth.geometry.iloc[index], pts.crs


def _wait(client, job_id, until, seconds=120):
    seen = []
    deadline = time.time() + seconds
    while time.time() < deadline:
        view = client.get(f"/v1/jobs/{job_id}").json()
        seen.append(view)
        if until(view):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach the state in {seconds}s: {seen[-1]}")


def test_announcement_matches_connection_file_readable_by_user_only(server):
    assert server.info["url"].startswith("http://127.0.0.1:")
    assert server.info["pid"] == server.proc.pid
    on_disk = json.loads(server.connection_file.read_text())
    assert {k: on_disk[k] for k in ("url", "token", "pid")} == {k: server.info[k] for k in ("url", "token", "pid")}
    assert stat.S_IMODE(server.connection_file.stat().st_mode) == 0o600


def test_requests_without_the_right_token_are_refused(server):
    assert httpx.get(f"{server.url}/v1/health").status_code == 401
    wrong = httpx.get(f"{server.url}/v1/health", headers={"Authorization": "Bearer " + "x" * 43})
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "Unauthorized" and "token" in wrong.json()["message"]
    ok = server.client.get("/v1/health")
    assert ok.status_code == 200 and ok.json()["model"] == server.info["model"]


def test_foreign_host_header_is_rejected(server):
    """A page on evil.example resolving its name to 127.0.0.1 (DNS rebinding) sends its own Host."""
    response = server.client.get("/v1/health", headers={"Host": "evil.example:80"})
    assert response.status_code == 400 and response.json()["error"] == "HostNotAllowed"
    assert server.client.get("/v1/health", headers={"Host": "localhost"}).status_code == 200


def test_no_cors_headers(server):
    response = server.client.get("/v1/health", headers={"Origin": "http://evil.example"})
    assert not any(h.lower().startswith("access-control-") for h in response.headers)


def test_bad_json_and_bad_paths_answer_4xx_with_one_line(server, scene, tmp_path):
    broken = server.client.post("/v1/predict", content=b"{not json", headers={"Content-Type": "application/json"})
    assert broken.status_code == 422 and broken.json()["error"] == "InvalidRequest"
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


def test_body_size_is_capped(server):
    response = server.client.post("/v1/predict", content=b"x" * (9 * 2**20), headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_predict_returns_the_clicked_object_and_reuses_the_chip(server, scene):
    click, truth, crs = _click(scene, 3)
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
    click, truth, crs = _click(scene, 5)
    from pyproj import Transformer

    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(click.x, click.y)
    answer = server.client.post("/v1/predict", json={"raster": str(scene["raster"]), "positive": [[lon, lat]],
                                                     "crs": "EPSG:4326"}).json()
    assert answer["crs"] == "EPSG:4326"
    polygon = shapely.geometry.shape(answer["object"]["geometry"])
    assert polygon.contains(shapely.Point(lon, lat))
    assert answer["object"]["properties"]["area_m2"] == pytest.approx(truth.area, rel=0.5)


def test_prefetch_encodes_ahead_of_the_click(server, scene):
    click, _, _ = _click(scene, 20)
    ahead = server.client.post("/v1/prefetch", json={"raster": str(scene["raster"]), "point": [click.x, click.y],
                                                     "stretch": "1,99"}).json()
    answer = server.client.post("/v1/predict", json={"raster": str(scene["raster"]), "positive": [[click.x, click.y]],
                                                     "stretch": "1,99"}).json()
    assert ahead["encoded"] is True and answer["encoded"] is False


def test_two_concurrent_predicts(server, scene):
    clicks = [_click(scene, i)[0] for i in (7, 30)]
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
    seen = _wait(server.client, submitted.json()["id"], lambda v: v["state"] in ("succeeded", "failed", "cancelled"))
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
    final = _wait(server.client, job["id"], lambda v: v["state"] in ("succeeded", "failed", "cancelled"))[-1]
    assert final["state"] == "succeeded", final
    assert foreign_state(output) == before
    digest = sha256(output)
    refused = server.client.post("/v1/jobs/segment", json=body)
    assert refused.status_code == 409 and "instances, boxes, bboxes, skipped" in refused.json()["message"]
    assert sha256(output) == digest
    job = server.client.post("/v1/jobs/segment", json={**body, "overwrite": True, "min_area": 1e9}).json()
    final = _wait(server.client, job["id"], lambda v: v["state"] in ("succeeded", "failed", "cancelled"))[-1]
    assert final["state"] == "succeeded", final
    assert foreign_state(output) == before
    assert len(gpd.read_file(output, layer="instances")) == 0  # replaced: every object is under 1e9 m²


def test_segment_job_with_inline_geojson_points(server, scene, tmp_path):
    points = gpd.read_file(scene["points"]).to_crs("EPSG:4326").iloc[:5]
    output = tmp_path / "inline.gpkg"
    job = server.client.post("/v1/jobs/segment", json={"raster": str(scene["raster"]), "output": str(output),
                                                       "points_geojson": json.loads(points.to_json())}).json()
    final = _wait(server.client, job["id"], lambda v: v["state"] in ("succeeded", "failed", "cancelled"))[-1]
    assert final["state"] == "succeeded", final
    assert len(gpd.read_file(output, layer="instances")) == 5


def test_cancel_mid_job_leaves_no_output(server, long_job_inputs, tmp_path):
    raster, points = long_job_inputs
    output = tmp_path / "cancelled.gpkg"
    job = server.client.post("/v1/jobs/segment", json={"raster": str(raster), "points": str(points),
                                                       "output": str(output)}).json()
    _wait(server.client, job["id"], lambda v: v["state"] == "running" and v["progress"] > 0.06)
    assert server.client.delete(f"/v1/jobs/{job['id']}").status_code == 200
    final = _wait(server.client, job["id"], lambda v: v["state"] in ("succeeded", "failed", "cancelled"))[-1]
    assert final["state"] == "cancelled", final
    assert final["progress"] < 1.0
    assert not output.exists() and not list(tmp_path.glob(".*partial*"))
    assert server.client.get("/v1/jobs/nope").status_code == 404


def test_a_cancelled_job_leaves_a_users_geopackage_as_it_was(server, long_job_inputs, tmp_path):
    raster, points = long_job_inputs
    output = user_geopackage(tmp_path / "project.gpkg")
    digest, listing = sha256(output), sorted(p.name for p in tmp_path.iterdir())
    job = server.client.post("/v1/jobs/segment", json={"raster": str(raster), "points": str(points),
                                                       "output": str(output)}).json()
    _wait(server.client, job["id"], lambda v: v["state"] == "running" and v["progress"] > 0.06)
    server.client.delete(f"/v1/jobs/{job['id']}")
    final = _wait(server.client, job["id"], lambda v: v["state"] in ("succeeded", "failed", "cancelled"))[-1]
    assert final["state"] == "cancelled", final
    assert sha256(output) == digest and sorted(p.name for p in tmp_path.iterdir()) == listing


def test_shutdown_cancels_the_running_job(tmp_path, long_job_inputs):
    raster, points = long_job_inputs
    srv = Server(tmp_path)
    output = tmp_path / "never.gpkg"
    job = srv.client.post("/v1/jobs/segment", json={"raster": str(raster), "points": str(points),
                                                    "output": str(output)}).json()
    _wait(srv.client, job["id"], lambda v: v["state"] == "running" and v["progress"] > 0.06)
    assert srv.stop() == 0
    assert not output.exists() and not list(tmp_path.glob(".*partial*"))
    assert not srv.connection_file.exists()


def test_remote_host_needs_allow_remote_and_a_token(tmp_path):
    from click.testing import CliRunner

    from pointsam_engine.cli import main

    refused = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--connection-file", str(tmp_path / "c.json")])
    assert refused.exit_code == 2 and "--allow-remote" in refused.output
    no_token = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--allow-remote",
                                         "--connection-file", str(tmp_path / "c.json")])
    assert no_token.exit_code == 2 and "--token" in no_token.output
    assert not (tmp_path / "c.json").exists()


def test_saved_openapi_schema_is_current():
    from pointsam_engine.api.app import openapi_schema

    saved = json.loads((Path(__file__).resolve().parents[2] / "docs" / "openapi.json").read_text())
    assert saved == json.loads(json.dumps(openapi_schema())), \
        "docs/openapi.json is stale; regenerate it with: python -m pointsam_engine.api docs/openapi.json"


def test_train_job_refuses_block_numbers_no_sam_has(server, tmp_path):
    """A range like 0-99999999999 would be expanded whole (the server ran out of memory under fuzzing)."""
    refused = server.client.post("/v1/jobs/train", json={"rasters": ["/nowhere.tif"], "points": ["/nowhere.gpkg"],
                                                         "output": str(tmp_path / "a.adapter.pt"), "blocks": "0-1000"})
    assert refused.status_code == 422 and refused.json()["error"] == "InvalidRequest"
    assert refused.json()["message"].startswith("blocks:")


def test_train_job_writes_an_adapter_the_server_can_report(server, scene, tmp_path):
    adapter = tmp_path / "region.adapter.pt"
    bad = server.client.post("/v1/jobs/train", json={"rasters": [str(scene["raster"])], "points": ["/nowhere.gpkg"],
                                                     "output": str(adapter)})
    assert bad.status_code == 422 and "/nowhere.gpkg does not exist" in bad.json()["message"]
    job = server.client.post("/v1/jobs/train", json={"rasters": [str(scene["raster"])], "points": [str(scene["points"])],
                                                     "output": str(adapter), "steps": 3, "val_fraction": 0,
                                                     "no_prototypes": True, "accelerator": "cpu"})
    assert job.status_code == 202, job.text
    seen = _wait(server.client, job.json()["id"], lambda v: v["state"] in ("succeeded", "failed", "cancelled"), 300)
    assert seen[-1]["state"] == "succeeded", seen[-1]
    assert seen[-1]["result"]["output"] == str(adapter) and adapter.is_file()
    from pointsam_engine.sam.adapter import read_adapter

    base = read_adapter(adapter)["base"]
    assert server.info["model"].startswith(f"{base['name']}@{base['sha256'][:12]}"), "trained on the server's base model"


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model, tmp_path_factory):
    """An adapter trained (in form) for the tiny test model, not for the server's bundled one."""

    from pointsam_engine.sam.adapter import save_adapter
    from pointsam_engine.sam.lora import add_lora
    from pointsam_engine.sam.model import load_model

    base = load_model(str(tiny_model), device="cpu")
    add_lora(base.sam, rank=2)
    folder = tmp_path_factory.mktemp("adapters")
    return save_adapter(base.sam, folder / "tinyregion.adapter.pt", base=base, config={"steps": 1}, history=[]), base


@pytest.fixture(scope="module")
def adapters_server(tmp_path_factory, tiny_adapter):
    srv = Server(tmp_path_factory.mktemp("adapters_server"), "--adapters-dir", str(tiny_adapter[0].parent))
    yield srv
    assert srv.stop() == 0


def _segment_report(client, scene, output, **choice) -> dict:
    job = client.post("/v1/jobs/segment", json={"raster": str(scene["raster"]), "points": str(scene["points"]),
                                                "output": str(output), **choice})
    assert job.status_code == 202, job.text
    final = _wait(client, job.json()["id"], lambda v: v["state"] in ("succeeded", "failed", "cancelled"))[-1]
    assert final["state"] == "succeeded", final
    return final["result"]["report"]


def test_model_pool_keeps_the_servers_model_and_the_last_other_each_loaded_once(tiny_model, tiny_adapter):
    from pointsam_engine.api.models import ModelPool
    from pointsam_engine.config import SegmentConfig

    adapter, tiny = tiny_adapter
    pool = ModelPool(SegmentConfig(model=str(tiny_model), device="cpu"))
    assert pool.get() is pool.default and pool.get(model=str(tiny_model)) is pool.default
    loads, load = [], pool._load
    pool._load = lambda model, adapter_path: loads.append(model) or load(model, adapter_path)
    adapted = [None, None]
    threads = [threading.Thread(target=lambda k=k: adapted.__setitem__(k, pool.get(adapter=str(adapter))))
               for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert adapted[0] is adapted[1] and len(loads) == 1, "two requests for a new model load it once"
    assert adapted[0].label.startswith(f"{tiny.label}+tinyregion@")
    bundled = pool.get("pointsam-tiny")
    assert [m for _, m in pool.loaded()] == [pool.default, bundled], "the least recently used other model went"
    assert pool.get(adapter=str(adapter)) is not adapted[0] and len(loads) == 3


def test_a_request_chooses_its_model_and_adapter(adapters_server, scene, tiny_model, tiny_adapter, tmp_path):
    adapter, tiny = tiny_adapter
    client, default = adapters_server.client, adapters_server.info["model"]
    click, _, _ = _click(scene, 3)
    answer = client.post("/v1/predict", json={"raster": str(scene["raster"]), "positive": [[click.x, click.y]]})
    assert answer.json()["object"]["properties"]["model"] == default
    by_name = client.post("/v1/predict", json={"raster": str(scene["raster"]), "positive": [[click.x, click.y]],
                                               "model": "pointsam-tiny"}).json()
    assert by_name["object"]["properties"]["model"] == default and by_name["encoded"] is False, \
        "the bundled model named is the server's own, with its cached embedding"
    ahead = {"raster": str(scene["raster"]), "point": [click.x, click.y], "model": str(tiny_model)}
    assert [client.post("/v1/prefetch", json=ahead).json()["encoded"] for _ in range(2)] == [True, False], \
        "another model encodes the chip again (embeddings are cached per model), once"
    assert _segment_report(client, scene, tmp_path / "tiny.gpkg", model=str(tiny_model))["model"] == tiny.label
    adapted = _segment_report(client, scene, tmp_path / "adapted.gpkg", model=str(tiny_model), adapter=str(adapter))
    assert adapted["model"].startswith(f"{tiny.label}+tinyregion@")


def test_an_adapter_for_another_base_is_refused_with_one_line(adapters_server, scene, tiny_adapter, tmp_path):
    adapter, tiny = tiny_adapter
    click, _, _ = _click(scene, 3)
    refused = adapters_server.client.post("/v1/predict", json={"raster": str(scene["raster"]),
                                                               "positive": [[click.x, click.y]], "adapter": str(adapter)})
    assert refused.status_code == 422
    body = refused.json()
    assert body["error"] == "ModelError" and "\n" not in body["message"]
    assert f"was trained on tiny-test@{tiny.sha256[:12]}, not on {adapters_server.info['model']}" in body["message"]
    job = adapters_server.client.post("/v1/jobs/segment", json={"raster": str(scene["raster"]), "points": str(scene["points"]),
                                                                "output": str(tmp_path / "x.gpkg"), "adapter": str(adapter)})
    assert job.status_code == 422 and not (tmp_path / "x.gpkg").exists()
    unknown = adapters_server.client.post("/v1/prefetch", json={"raster": str(scene["raster"]), "point": [click.x, click.y],
                                                                "model": "vit_q"})
    assert unknown.status_code == 422 and "checkpoint vit_q does not exist" in unknown.json()["message"]


def test_models_lists_models_with_their_sha_and_the_adapters_dir(adapters_server, tiny_adapter, tiny_model):
    adapter, tiny = tiny_adapter
    listed = adapters_server.client.get("/v1/models").json()
    bundled = next(m for m in listed["available"] if m["name"] == "pointsam-tiny")
    assert adapters_server.info["model"].startswith(f"pointsam-tiny@{bundled['sha256'][:12]}") and bundled["loaded"]
    assert {"name": "tinyregion", "path": str(adapter),
            "base": {"name": "tiny-test", "sha256": tiny.sha256, "model_type": "pointsam"}} in listed["adapters"]
    adapters_server.client.post("/v1/prefetch", json={"raster": "/nowhere.tif", "point": [0, 0], "model": str(tiny_model)})
    loaded_by_path = [m for m in adapters_server.client.get("/v1/models").json()["available"] if m["sha256"] == tiny.sha256]
    assert [(m["name"], m["path"], m["loaded"]) for m in loaded_by_path] == [("tiny-test", str(tiny_model), True)]


@pytest.fixture(scope="module")
def segmented(server, scene, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("segmented") / "scene.gpkg"
    _segment_report(server.client, scene, output)
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
