"""``create_app``: routes take the engine through the ``get_engine`` dependency, so a test can swap it; the saved
OpenAPI schema is the app's."""

from __future__ import annotations

import json
import time
from pathlib import Path

from fastapi.testclient import TestClient

from pointsam_engine.api.app import create_app
from pointsam_engine.api.engine import get_engine
from pointsam_engine.errors import Cancelled
from tests.engine.api.support import TOKEN, StubEngine


def test_a_route_answers_from_the_overriding_engine_not_the_apps_own():
    own, stub = StubEngine("own@111111111111"), StubEngine("stub@222222222222")
    app = create_app(own, TOKEN, allowed_hosts=("testserver",))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
        assert api.get("/v1/health").json()["model"] == "own@111111111111"
        app.dependency_overrides[get_engine] = lambda: stub
        health = api.get("/v1/health")
        assert health.status_code == 200 and health.json()["model"] == "stub@222222222222"
        assert health.json()["device"] == "cpu" and health.json()["precision"] == "fp32"
    stub.close()


def test_the_job_routes_read_the_overriding_engines_queue(api, stub_engine):
    job = stub_engine.jobs.submit("segment", lambda progress, cancel: {"output": "x.gpkg"})
    for _ in range(200):
        if stub_engine.jobs.get(job.id).state == "succeeded":
            break
        time.sleep(0.01)
    assert [j["id"] for j in api.get("/v1/jobs").json()["jobs"]] == [job.id]
    view = api.get(f"/v1/jobs/{job.id}").json()
    assert view["state"] == "succeeded" and view["result"] == {"output": "x.gpkg"} and view["kind"] == "segment"


def test_stopping_the_app_closes_its_engine_and_cancels_its_running_job():
    engine = StubEngine()

    def until_cancelled(progress, cancel):
        while not cancel.wait(0.01):
            progress(0.5, "working")
        raise Cancelled("stopped")

    with TestClient(create_app(engine, TOKEN, allowed_hosts=("testserver",))):
        job = engine.jobs.submit("segment", until_cancelled)
        while engine.jobs.get(job.id).state != "running":
            time.sleep(0.01)
    assert engine.jobs.get(job.id).state == "cancelled"


def test_saved_openapi_schema_is_current():
    from pointsam_engine.api.app import openapi_schema

    saved = json.loads((Path(__file__).resolve().parents[3] / "docs" / "openapi.json").read_text())
    assert saved == json.loads(json.dumps(openapi_schema())), \
        "docs/openapi.json is stale; regenerate it with: python -m pointsam_engine.api docs/openapi.json"
