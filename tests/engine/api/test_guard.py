"""The guard: a request with the wrong Host, no token or too big a body never reaches a route."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

from pointsam_engine.api.guard import host_name
from tests.engine.api.support import TOKEN, assert_error


def test_a_request_without_the_right_token_is_refused(app):
    with TestClient(app) as anonymous:
        assert_error(anonymous.get("/v1/health"), 401, "Unauthorized", "Authorization: Bearer <token>")
        wrong = anonymous.get("/v1/health", headers={"Authorization": "Bearer " + "x" * len(TOKEN)})
        assert_error(wrong, 401, "Unauthorized", "missing or wrong token")
        assert anonymous.get("/v1/health", headers={"Authorization": f"bearer  {TOKEN} "}).status_code == 200


def test_another_host_is_refused_before_the_token_is_checked(api):
    assert_error(api.get("/v1/health", headers={"Host": "evil.example:80"}), 400, "HostNotAllowed", "Host header")
    assert api.get("/v1/health", headers={"Host": "testserver:8080"}).status_code == 200


def test_a_declared_length_over_the_cap_is_refused_before_reading(api):
    assert_error(api.post("/v1/predict", content=b"{}", headers={"Content-Length": "5000"}), 413, "BodyTooLarge",
                 "over 1024 bytes")


@pytest.mark.parametrize("host, name", [("example.org:8080", "example.org"), ("[::1]:8080", "::1"), ("::1", "::1"),
                                        ("LocalHost", "localhost"), ("[::1", "[::1")])
def test_host_name_drops_the_port(host, name):
    assert host_name(host) == name


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


def test_body_size_is_capped(server):
    response = server.client.post("/v1/predict", content=b"x" * (9 * 2**20), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
