"""The bundled model's card states what a fresh measurement gives: the bar of 0.75 mIoU on each kind."""

from __future__ import annotations

import re

import pytest

from pointsam_engine.model import BUNDLED, BUNDLED_DIR
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
