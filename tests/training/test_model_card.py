"""The bundled model's card states what a fresh measurement gives, and the model keeps its generated-scene quality.

The bundled model learnt real roofs on top of the generated-only model (issue 19); the bar on generated scenes
is that model's card less 0.02 (buildings 0.880, ships 0.753), so learning real imagery may not cost more.
"""

from __future__ import annotations

import re

import pytest

from pointsam_engine.sam.model import BUNDLED, BUNDLED_DIR
from training.model_card import EVAL_SETS, measure

GENERATED_ONLY = {"buildings": 0.880, "ships": 0.753}  # the card of the model trained on generated scenes only
# the card is measured on one machine; torch's fp32 kernels for other CPU features round differently, which moves
# a mIoU by a little more than the card's rounding (an AVX2-only CPU measured ships 0.7343; the card, written on
# an AVX-512 one, says 0.736)
CARD_TOLERANCE = 0.003
# the same rounding flips a borderline mask (one covering about half a neighbour) between merged and not: an
# Intel Xeon with AMX counts 127 merges without calibration on the dense scenes where the card says 128
MERGES_TOLERANCE = 2


@pytest.fixture(scope="module")
def measured():
    return measure(BUNDLED_DIR / BUNDLED["pointsam-tiny"], sets={k: EVAL_SETS[k] for k in ("buildings", "ships")})


@pytest.mark.parametrize("kind", ["buildings", "ships"])
def test_bundled_model_keeps_its_generated_scene_quality(measured, kind):
    assert measured[kind]["miou"] >= GENERATED_ONLY[kind] - 0.02, measured[kind]


@pytest.mark.parametrize("kind", ["buildings", "ships"])
def test_the_card_reports_what_is_measured(measured, kind):
    card = (BUNDLED_DIR / "pointsam-tiny.md").read_text()
    row = re.search(rf"^\| {kind} \| ([0-9.]+) \| ([0-9.]+) \| (\d+) \|", card, re.M)
    assert row, f"no row for {kind} in the model card"
    assert float(row.group(1)) == pytest.approx(measured[kind]["miou"], abs=CARD_TOLERANCE)
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
    for on_card, measured_here in zip((int(row.group(1)), int(row.group(2))),
                                      (dense_mask_merges[True], dense_mask_merges[False])):
        assert abs(on_card - measured_here) <= MERGES_TOLERANCE, (row.group(0), dense_mask_merges)


def test_the_bundled_model_fits_the_package_allowance():
    """Issue 19 lets the bundled model grow (a successor) but not past 20 MB inside the package."""
    size = (BUNDLED_DIR / BUNDLED["pointsam-tiny"]).stat().st_size
    assert size <= 20_000_000, f"{size / 1e6:.1f} MB"
