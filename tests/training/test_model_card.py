"""The bundled model's card states what a fresh measurement gives: the bar of 0.75 mIoU on each kind."""

from __future__ import annotations

import re

import pytest

from pointsam_engine.sam.model import BUNDLED, BUNDLED_DIR
from training.model_card import EVAL_SETS, measure

BAR = 0.75


@pytest.fixture(scope="module")
def measured():
    return measure(BUNDLED_DIR / BUNDLED["pointsam-tiny"], sets={k: EVAL_SETS[k] for k in ("buildings", "ships")})


@pytest.mark.parametrize("kind", ["buildings", "ships"])
def test_bundled_model_meets_the_bar_on_the_model_card_scenes(measured, kind):
    assert measured[kind]["miou"] >= BAR, measured[kind]


@pytest.mark.parametrize("kind", ["buildings", "ships"])
def test_the_card_reports_what_is_measured(measured, kind):
    card = (BUNDLED_DIR / "pointsam-tiny.md").read_text()
    row = re.search(rf"^\| {kind} \| ([0-9.]+) \| ([0-9.]+) \| (\d+) \|", card, re.M)
    assert row, f"no row for {kind} in the model card"
    assert float(row.group(1)) == pytest.approx(measured[kind]["miou"], abs=5e-4)
    assert int(row.group(3)) == measured[kind]["merges"]


@pytest.fixture(scope="module")
def dense_mask_merges():
    """Merges of the model's own masks (before the overlap rule) on the card's dense scenes, with and without calibration."""
    dense = {"dense buildings": EVAL_SETS["dense buildings"]}
    path = BUNDLED_DIR / BUNDLED["pointsam-tiny"]
    return {calibration: measure(path, calibration=calibration, sets=dense, keep_overlaps=True)["dense buildings"]["merges"]
            for calibration in (True, False)}


def test_calibration_reduces_merges_of_the_masks_on_dense_buildings(dense_mask_merges):
    assert dense_mask_merges[True] < dense_mask_merges[False], dense_mask_merges


def test_the_card_reports_the_measured_mask_merges(dense_mask_merges):
    card = (BUNDLED_DIR / "pointsam-tiny.md").read_text()
    row = re.search(r"^\| dense buildings \|(?: [0-9.]+ \|){5} (\d+) \| (\d+) \|", card, re.M)
    assert row, "no mask merges for dense buildings in the model card"
    assert (int(row.group(1)), int(row.group(2))) == (dense_mask_merges[True], dense_mask_merges[False])
