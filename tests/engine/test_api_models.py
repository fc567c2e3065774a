"""The model routes over real HTTP: the engine's app in uvicorn on a loopback port (in this process, so the
tests can point it at their model folder), called through the plugin's own client and with httpx; the
checkpoint comes from the loopback file server of ``test_download``."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from pointsam_engine.api.app import Engine, create_app
from pointsam_engine.config import SegmentConfig
from qgis_plugin.client import EngineClient
from qgis_plugin.errors import EngineRequestError

from .test_download import FILE, PAYLOAD, file_server, models_dir, part_file, visible_files  # noqa: F401 (fixtures)

TOKEN = "test-token"


@pytest.fixture(scope="module")
def engine_url():
    """The engine's app (bundled model) served by uvicorn from a thread; shut down like ``pointsam serve``."""
    engine = Engine(SegmentConfig(cache_mb=16))
    server = uvicorn.Server(uvicorn.Config(create_app(engine, TOKEN), log_level="warning", access_log=False))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(60)


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
    assert [entry["name"] for entry in listing["catalog"]] == ["vit_b", "vit_l", "vit_h"]
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
                             "message": "'vit_x' is not an official SAM checkpoint; use one of vit_b, vit_l, vit_h"}
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
