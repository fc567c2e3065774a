"""The table of official SAM and SAM 2.1 checkpoints, and how names find their files in the model folders."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pointsam_engine import catalog
from pointsam_engine.catalog import CATALOG, OFFICIAL_BASE_URL, checkpoint, download_dir, installed_path, model_dirs
from pointsam_engine.errors import ModelError
from pointsam_engine.sam.model import OFFICIAL_ARCHS, REGISTERED, resolve_model_path
from pointsam_engine.sam.sam2_backend import SAM2_ARCHS


def test_the_table_holds_the_official_checkpoints(monkeypatch):
    monkeypatch.delenv(catalog.BASE_URL_VARIABLE, raising=False)
    assert set(CATALOG) == set(OFFICIAL_ARCHS) | set(SAM2_ARCHS)
    assert REGISTERED == {name: entry.file for name, entry in CATALOG.items()}
    sam2_files = {"hiera_t": "tiny", "hiera_s": "small", "hiera_b+": "base_plus", "hiera_l": "large"}
    for name, entry in CATALOG.items():
        assert entry.name == name
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
        if name in SAM2_ARCHS:
            assert entry.file == f"sam2.1_hiera_{sam2_files[name]}.pt" and entry.family == "SAM 2.1"
            assert entry.url == entry.official_url == f"{catalog.SAM2_BASE_URL}/{entry.file}"
        else:
            assert re.fullmatch(rf"sam_{name}_[0-9a-f]{{6}}\.pth", entry.file) and entry.family == "SAM"
            assert entry.url == entry.official_url == f"{OFFICIAL_BASE_URL}/{entry.file}"
        assert entry.url.startswith("https://")
    for names in (("vit_b", "vit_l", "vit_h"), ("hiera_t", "hiera_s", "hiera_b+", "hiera_l")):
        sizes = [CATALOG[name].size for name in names]
        assert sizes == sorted(sizes) and sizes[0] > 150e6


def test_the_base_url_can_be_replaced(monkeypatch):
    monkeypatch.setenv(catalog.BASE_URL_VARIABLE, "http://127.0.0.1:8000/mirror/")
    assert CATALOG["vit_h"].url == "http://127.0.0.1:8000/mirror/sam_vit_h_4b8939.pth"
    assert CATALOG["vit_h"].official_url.startswith(OFFICIAL_BASE_URL)


def test_names_are_looked_up_and_an_unknown_one_is_refused_in_one_line():
    assert checkpoint("vit_l") is checkpoint("sam_vit_l") is CATALOG["vit_l"]
    assert checkpoint("hiera_b+") is checkpoint("sam2.1_hiera_b+") is CATALOG["hiera_b+"]
    with pytest.raises(ModelError, match=r"^'vit_t' is not an official SAM or SAM 2\.1 checkpoint; use one of vit_b, "
                                         r"vit_l, vit_h, hiera_t, hiera_s, hiera_b\+, hiera_l$"):
        checkpoint("vit_t")


def test_downloads_go_to_the_first_model_folder_and_names_find_the_first_copy(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    monkeypatch.setenv("POINTSAM_MODELS", f"{first}:{second}")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert model_dirs() == [first, second, tmp_path / "home" / ".cache" / "pointsam" / "models"]
    assert download_dir() == first
    assert installed_path("vit_b") is None
    second.mkdir()
    (second / CATALOG["vit_b"].file).write_bytes(b"b")
    assert installed_path("vit_b") == second / CATALOG["vit_b"].file
    assert resolve_model_path("vit_b") == second / CATALOG["vit_b"].file
    first.mkdir()
    (first / CATALOG["vit_b"].file).write_bytes(b"b")
    assert resolve_model_path("vit_b") == first / CATALOG["vit_b"].file


def test_a_missing_registered_model_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("POINTSAM_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(ModelError, match=r"get it with `pointsam models pull vit_h`") as missing:
        resolve_model_path("vit_h")
    assert str(tmp_path / "models") in str(missing.value) and "\n" not in str(missing.value)
    assert not Path(tmp_path / "models").exists()
