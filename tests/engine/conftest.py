"""Fixtures shared by the engine's tests: the model folder and the loopback checkpoint server (downloads)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pointsam_engine import catalog
from pointsam_engine.catalog import CATALOG, Checkpoint
from tests.engine.checkpoint_server import FILE, PAYLOAD, FileServer


@pytest.fixture
def models_dir(tmp_path, monkeypatch) -> Path:
    """An empty model folder first in $POINTSAM_MODELS, and a HOME with no models."""
    folder = tmp_path / "models"
    monkeypatch.setenv("POINTSAM_MODELS", str(folder))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return folder


@pytest.fixture
def file_server(models_dir, monkeypatch):
    """The loopback server, with vit_b's catalogue entry describing its file."""
    server = FileServer(PAYLOAD)
    monkeypatch.setitem(CATALOG, "vit_b", Checkpoint("vit_b", FILE, len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest()))
    monkeypatch.setenv(catalog.BASE_URL_VARIABLE, server.url)
    yield server
    server.close()
