"""Schemathesis over the saved OpenAPI schema, against a real server: no input makes the server fail (5xx)."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.engine.api.serve_process import Server

SCHEMA = schemathesis.openapi.from_path(Path(__file__).resolve().parents[3] / "docs" / "openapi.json")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("fuzz_server"))
    yield srv
    assert srv.stop() == 0


@SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_makes_a_server_error(case, fuzz_server):
    response = case.call(base_url=fuzz_server.url, headers={"Authorization": f"Bearer {fuzz_server.token}"})
    assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text[:500]}"
