"""The models the server keeps (``api/models.py``) and the model routes (``api/routers/models.py``).

The download routes run over real HTTP: the engine's app in uvicorn on a loopback port (in this process, so the
tests can point it at their model folder), called through the plugin's own client and with httpx; the
checkpoint comes from the loopback file server of :mod:`tests.engine.checkpoint_server`. Choosing a model or an
adapter per request runs against a ``pointsam serve`` process started with ``--adapters-dir``."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import httpx
import pytest

from pointsam_engine.api.app import create_app
from pointsam_engine.api.engine import Engine
from pointsam_engine.config import SegmentConfig
from qgis_plugin.client import EngineClient
from qgis_plugin.errors import EngineRequestError
from tests.engine.api.serve_process import Server, scene_click, segment_report
from tests.engine.api.served import served
from tests.engine.checkpoint_server import FILE, PAYLOAD, part_file, visible_files

TOKEN = "test-token"


@pytest.fixture(scope="module")
def engine_url():
    """The engine's app (bundled model) served by uvicorn from a thread; shut down like ``pointsam serve``."""
    with served(create_app(Engine(SegmentConfig(cache_mb=16)), TOKEN)) as url:
        yield url


@pytest.fixture
def client(engine_url, file_server) -> EngineClient:
    return EngineClient(engine_url, TOKEN, timeout=30)


@pytest.fixture
def http(engine_url, file_server):
    with httpx.Client(base_url=engine_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as session:
        yield session


def wait_until_finished(client: EngineClient, job: dict) -> dict:
    for _ in range(600):  # a guard against hanging, not a speed requirement
        job = client.job(job["id"])
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job['id']} did not finish: {job}")


def test_models_lists_the_catalogue_and_the_model_folder(client, models_dir):
    listing = client.models()
    assert listing["model_dir"] == str(models_dir)
    assert [entry["name"] for entry in listing["catalog"]] == ["vit_b", "vit_l", "vit_h", "hiera_t", "hiera_s", "hiera_b+",
                                                               "hiera_l"]  # SAM's, then SAM 2.1's
    vit_b = listing["catalog"][0]
    assert vit_b["installed"] is False and vit_b["path"] is None and vit_b["sha256_state"] == "not installed"
    assert vit_b["sha256"] == hashlib.sha256(PAYLOAD).hexdigest() and vit_b["size"] == len(PAYLOAD)
    assert vit_b["url"].startswith("http://127.0.0.1:") and vit_b["url"].endswith(f"/{FILE}")
    assert "vit_b" not in [model["name"] for model in listing["available"]]


def test_pull_job_downloads_and_the_model_is_listed_once(client, models_dir):
    job = client.pull("vit_b")
    assert job["kind"] == "pull"
    done = wait_until_finished(client, job)
    assert done["state"] == "succeeded", done
    assert done["result"] == {"name": "vit_b", "path": str(models_dir / FILE),
                              "sha256": hashlib.sha256(PAYLOAD).hexdigest(), "downloaded": True}
    listing = client.models()
    vit_b = listing["catalog"][0]
    assert vit_b["installed"] is True and vit_b["sha256_state"] == "verified"
    assert [model["name"] for model in listing["available"]].count("vit_b") == 1
    assert client.verify_model("vit_b") == {"name": "vit_b", "path": str(models_dir / FILE),
                                            "sha256": hashlib.sha256(PAYLOAD).hexdigest(), "ok": True}
    assert client.remove_model("vit_b") == {"name": "vit_b", "removed": str(models_dir / FILE)}
    assert client.models()["catalog"][0]["installed"] is False
    assert visible_files(models_dir) == []


def test_cancelled_pull_keeps_the_partial_file_and_the_next_pull_resumes(client, file_server, models_dir):
    file_server.block_delay = 0.02  # about a second for the whole file
    job = client.pull("vit_b")
    while not part_file(models_dir).exists() or not part_file(models_dir).stat().st_size:
        assert client.job(job["id"])["state"] in ("queued", "running")
        time.sleep(0.02)
    client.cancel(job["id"])
    cancelled = wait_until_finished(client, job)
    assert cancelled["state"] == "cancelled" and "partial file is kept" in cancelled["message"]
    kept = part_file(models_dir).stat().st_size
    assert 0 < kept < len(PAYLOAD) and not (models_dir / FILE).exists()
    file_server.block_delay = 0.0
    done = wait_until_finished(client, client.pull("vit_b"))
    assert done["state"] == "succeeded"
    assert file_server.ranges[-1] == f"bytes={kept}-"
    assert (models_dir / FILE).read_bytes() == PAYLOAD


def test_a_corrupted_download_fails_the_job_in_one_line(client, file_server, models_dir):
    file_server.payload = b"\0" + PAYLOAD[1:]
    failed = wait_until_finished(client, client.pull("vit_b"))
    assert failed["state"] == "failed" and "not the official" in failed["message"]
    assert "\n" not in failed["message"]
    assert visible_files(models_dir) == []


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/v1/jobs/pull", {"name": "vit_x"}),
    ("POST", "/v1/models/verify", {"name": "vit_x"}),
    ("DELETE", "/v1/models/vit_x", None),
])
def test_an_unknown_name_answers_422_in_one_line_and_starts_no_job(http, method, path, body):
    jobs_before = len(http.get("/v1/jobs").json()["jobs"])
    answer = http.request(method, path, json=body)
    assert answer.status_code == 422
    assert answer.json() == {"error": "ModelError",
                             "message": "'vit_x' is not an official SAM or SAM 2.1 checkpoint; use one of vit_b, vit_l, "
                                        "vit_h, hiera_t, hiera_s, hiera_b+, hiera_l"}
    assert len(http.get("/v1/jobs").json()["jobs"]) == jobs_before


def test_verify_or_remove_of_a_model_not_installed_is_refused(client, models_dir):
    for call in (client.verify_model, client.remove_model):
        with pytest.raises(EngineRequestError, match="vit_l is not installed") as refused:
            call("vit_l")
        assert refused.value.status == 422


def test_a_mismatching_installed_file_verifies_false_and_pull_keeps_it(client, models_dir):
    models_dir.mkdir()
    (models_dir / FILE).write_bytes(b"not a checkpoint")
    assert client.verify_model("vit_b")["ok"] is False
    assert client.models()["catalog"][0]["sha256_state"] == "wrong size"
    failed = wait_until_finished(client, client.pull("vit_b"))
    assert failed["state"] == "failed" and "is not the official vit_b" in failed["message"]
    assert Path(models_dir / FILE).read_bytes() == b"not a checkpoint"


def test_a_file_put_there_by_hand_is_hashed_once_and_shown_verified(client, models_dir):
    models_dir.mkdir()
    (models_dir / FILE).write_bytes(PAYLOAD)
    assert client.models()["catalog"][0]["sha256_state"] == "verified"
    (models_dir / "other").mkdir()
    (models_dir / "other" / FILE).write_bytes(b"\0" * len(PAYLOAD))
    (models_dir / FILE).unlink()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("POINTSAM_MODELS", str(models_dir / "other"))
        assert client.models()["catalog"][0]["sha256_state"] == "sha256 mismatch"


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model, tmp_path_factory):
    """An adapter trained (in form) for the tiny test model, not for the server's bundled one."""

    from pointsam_engine.config import SegmentConfig
    from pointsam_engine.sam.adapter import save_adapter
    from pointsam_engine.sam.lora import add_lora
    from pointsam_engine.sam.model import load_model

    base = load_model(str(tiny_model), device="cpu", precision=SegmentConfig.precision)  # as the servers load it
    add_lora(base.sam, rank=2)
    folder = tmp_path_factory.mktemp("adapters")
    return save_adapter(base.sam, folder / "tinyregion.adapter.pt", base=base, config={"steps": 1}, history=[]), base


@pytest.fixture(scope="module")
def adapters_server(tmp_path_factory, tiny_adapter):
    srv = Server(tmp_path_factory.mktemp("adapters_server"), "--adapters-dir", str(tiny_adapter[0].parent))
    yield srv
    assert srv.stop() == 0


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
    click, _, _ = scene_click(scene, 3)
    answer = client.post("/v1/predict", json={"raster": str(scene["raster"]), "positive": [[click.x, click.y]]})
    assert answer.json()["object"]["properties"]["model"] == default
    by_name = client.post("/v1/predict", json={"raster": str(scene["raster"]), "positive": [[click.x, click.y]],
                                               "model": "pointsam-tiny"}).json()
    assert by_name["object"]["properties"]["model"] == default and by_name["encoded"] is False, \
        "the bundled model named is the server's own, with its cached embedding"
    ahead = {"raster": str(scene["raster"]), "point": [click.x, click.y], "model": str(tiny_model)}
    assert [client.post("/v1/prefetch", json=ahead).json()["encoded"] for _ in range(2)] == [True, False], \
        "another model encodes the chip again (embeddings are cached per model), once"
    assert segment_report(client, scene, tmp_path / "tiny.gpkg", model=str(tiny_model))["model"] == tiny.label
    adapted = segment_report(client, scene, tmp_path / "adapted.gpkg", model=str(tiny_model), adapter=str(adapter))
    assert adapted["model"].startswith(f"{tiny.label}+tinyregion@")


def test_an_adapter_for_another_base_is_refused_with_one_line(adapters_server, scene, tiny_adapter, tmp_path):
    adapter, tiny = tiny_adapter
    click, _, _ = scene_click(scene, 3)
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
