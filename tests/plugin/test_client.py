"""The plugin's HTTP client (``qgis_plugin/client.py``, standard library only) outside QGIS, against the
engine's real app served by uvicorn on a loopback port: the token it sends, the engine's refusals turned into
one-line :class:`EngineRequestError`, a silent or absent engine, and following a job to its end."""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace

import pytest

from pointsam_engine.api.app import create_app
from pointsam_engine.api.engine import Engine, get_engine
from pointsam_engine.config import SegmentConfig
from pointsam_engine.errors import OutputError
from qgis_plugin.client import EngineClient
from qgis_plugin.errors import EngineRequestError, EngineUnavailableError, JobFailedError
from tests.conftest import work_until_cancelled
from tests.engine.api.served import served

TOKEN = "plugin-test-token"


@pytest.fixture(scope="module")
def engine():
    return Engine(SegmentConfig(cache_mb=16))


@pytest.fixture(scope="module")
def app(engine):
    return create_app(engine, TOKEN)


@pytest.fixture(scope="module")
def url(app):
    with served(app) as address:
        yield address


@pytest.fixture
def client(url) -> EngineClient:
    return EngineClient(url, TOKEN, timeout=30)


def test_the_client_sends_its_token(client, engine):
    assert client.health()["model"] == engine.model.label


def test_a_wrong_token_is_the_engines_one_line_refusal(url):
    with pytest.raises(EngineRequestError) as refused:
        EngineClient(url, "not-the-token").health()
    assert (refused.value.status, refused.value.code) == (401, "Unauthorized")
    assert str(refused.value) == ("missing or wrong token; send 'Authorization: Bearer <token>' "
                                  "with the token pointsam serve printed")


def test_bad_input_becomes_the_engines_message_and_code(client):
    with pytest.raises(EngineRequestError, match="/nowhere/x.tif does not exist") as refused:
        client.predict(raster="/nowhere/x.tif", positive=[[0, 0]])
    assert (refused.value.status, refused.value.code) == (422, "RasterError")
    assert "\n" not in str(refused.value)


def test_an_invalid_request_and_an_unknown_job_are_refused_in_one_line(client):
    with pytest.raises(EngineRequestError, match=r"^raster: Field required; see /v1/openapi.json$") as invalid:
        client.predict(positive=[[0, 0]])
    assert (invalid.value.status, invalid.value.code) == (422, "InvalidRequest")
    with pytest.raises(EngineRequestError, match="^no job nope; list jobs with GET /v1/jobs$") as unknown:
        client.job("nope")
    assert (unknown.value.status, unknown.value.code) == (404, "NoSuchJob")


class _SlowEngine:
    """An engine whose health answer takes a second: longer than the client waits."""

    @property
    def model(self):
        time.sleep(1.0)
        return SimpleNamespace(device="cpu", label="slow@000000000000", precision="fp32")


def test_an_engine_that_does_not_answer_in_time_is_unavailable(url, app):
    app.dependency_overrides[get_engine] = _SlowEngine
    try:
        with pytest.raises(EngineUnavailableError, match=f"^the PointSAM engine at {url} does not answer "
                                                         r"\(timed out\); restart it$"):
            EngineClient(url, TOKEN, hint="restart it").health(timeout=0.2)
    finally:
        app.dependency_overrides.clear()


def test_no_engine_on_the_port_is_unavailable_with_the_hint():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(EngineUnavailableError, match="does not answer .*; use Set up engine$"):
        EngineClient(closed, TOKEN, hint="use Set up engine").models()


def test_follow_reports_progress_and_returns_the_result(client, engine):
    def work(progress, cancel):
        for step in range(1, 4):
            progress(step / 4, f"step {step}")
            time.sleep(0.05)
        return {"output": "out.gpkg"}

    job = engine.jobs.submit("segment", work).to_dict()
    seen = []
    assert client.follow(job, lambda fraction, stage: seen.append((fraction, stage)), lambda: False,
                         poll=0.01) == {"output": "out.gpkg"}
    assert seen[-1] == (1.0, "done") and [f for f, _ in seen] == sorted(f for f, _ in seen)


def test_follow_reports_the_steps_of_a_job_that_ended_between_two_polls(client, engine):
    def work(progress, cancel):
        progress(0.1, "reading")
        for chip in range(1, 4):
            progress(0.2 * chip, f"encoding chip {chip}/3")
            progress(0.2 * chip, f"chip {chip}/3")
        progress(0.9, "writing")
        return {}

    gate = threading.Event()
    engine.jobs.submit("segment", lambda progress, cancel: {"opened": gate.wait(30)})  # holds the one worker
    queued = engine.jobs.submit("segment", work)
    job = queued.to_dict()  # as submit answers it: still queued
    gate.set()
    deadline = time.monotonic() + 30
    while queued.state not in ("succeeded", "failed") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job["state"] == "queued" and queued.state == "succeeded"
    seen = []
    client.follow(job, lambda fraction, stage: seen.append(stage), lambda: False, poll=0.01)
    assert seen == ["starting", "reading", "encoding chip 3/3", "chip 3/3", "writing", "done"]


def test_follow_raises_the_failed_jobs_message(client, engine):
    def work(progress, cancel):
        raise OutputError("out.gpkg has layer(s) bboxes; pass --overwrite")

    job = engine.jobs.submit("segment", work).to_dict()
    with pytest.raises(JobFailedError, match=r"^out.gpkg has layer\(s\) bboxes; pass --overwrite$"):
        client.follow(job, lambda fraction, stage: None, lambda: False, poll=0.01)


def test_follow_cancels_the_job_when_the_user_cancels(client, engine):
    work, started = work_until_cancelled()
    job = engine.jobs.submit("segment", work).to_dict()
    assert started.wait(30)
    with pytest.raises(JobFailedError, match="^the run was cancelled; nothing was written$"):
        client.follow(job, lambda fraction, stage: None, lambda: True, poll=0.01)
    assert client.job(job["id"])["state"] == "cancelled"
