"""What the in-process API tests share: a stand-in for the server's engine (put in with
``app.dependency_overrides``) and the check of an error answer."""

from __future__ import annotations

from types import SimpleNamespace

from pointsam_engine.jobs import JobRunner

TOKEN = "test-token"


class StubEngine:
    """Stands in for :class:`~pointsam_engine.api.engine.Engine` where a route needs only its model's
    description and the job queue."""

    def __init__(self, label: str = "stub@000000000000"):
        self.model = SimpleNamespace(device="cpu", label=label, precision="fp32")
        self.jobs = JobRunner()

    def close(self) -> None:
        self.jobs.shutdown()


def assert_error(response, status: int, code: str, says: str) -> None:
    """``response`` is the API's error answer: ``status``, ``{"error": code, "message": <one line with says>}``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message"} and body["error"] == code
    assert says in body["message"] and "\n" not in body["message"]
