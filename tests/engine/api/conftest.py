"""The API's fixtures: a ``pointsam serve`` process (one per session) with a generated scene to click, and, for
in-process tests, the app with a stub engine put in by ``app.dependency_overrides``, called through Starlette's
TestClient (no model, no socket)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from pointsam_engine.api.app import create_app
from pointsam_engine.api.engine import get_engine
from pointsam_engine.demo.scenes import generate
from tests.conftest import write_points, write_raster
from tests.engine.api.serve_process import Server
from tests.engine.api.support import TOKEN, StubEngine


@pytest.fixture
def stub_engine():
    engine = StubEngine()
    yield engine
    engine.close()


@pytest.fixture
def app(stub_engine):
    """The real app on no engine of its own, with the stub engine as the dependency override."""
    app = create_app(None, TOKEN, allowed_hosts=("testserver",), max_body=1024)
    app.dependency_overrides[get_engine] = lambda: stub_engine
    return app


@pytest.fixture
def api(app):
    """An authorised client of ``app``."""
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


@pytest.fixture(scope="session")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api_scene")
    return generate("buildings", folder, size=384, seed=41077)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("api_server"))
    yield srv
    assert srv.stop() == 0
    assert not srv.connection_file.exists(), "the connection file outlived the server"


@pytest.fixture(scope="session")
def long_job_inputs(tmp_path_factory):
    """A raster and a grid of clicks that take many chips: long enough to cancel part-way."""
    folder = tmp_path_factory.mktemp("long_job")
    rng = np.random.default_rng(0)
    raster = write_raster(folder / "noise.tif", rng.integers(0, 255, (3, 3072, 3072), dtype=np.uint8))
    xy = [(500000.0 + 0.5 * c, 4000000.0 - 0.5 * r) for r in range(100, 3072, 200) for c in range(100, 3072, 200)]
    points = write_points(folder / "grid.gpkg", xy)
    return raster, points
