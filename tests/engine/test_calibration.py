import numpy as np
import pytest

from pointsam_engine.calibration import (
    MAX_NEIGHBOURS,
    Clicks,
    calibrate,
    contains_points,
    find_neighbours,
    mask_iou,
    overlapping_pairs,
    resolve_overlaps,
    shared_pixels,
)
from pointsam_engine.masks import MaskPatch, Prompt
from tests.conftest import SquarePredictor


def _square(r0, c0, size, value=1.0):
    return MaskPatch(r0, c0, np.full((size, size), value, np.float32), 0.9)


def test_iou_and_point_containment():
    a, b = _square(0, 0, 10), _square(5, 5, 10)
    assert shared_pixels(a, b) == 25
    assert mask_iou(a, b) == pytest.approx(25 / 175)
    assert contains_points(a, np.array([[9.5, 9.5]]))
    assert not contains_points(a, np.array([[10.5, 9.5]]))


def test_neighbours_by_iou_threshold_or_by_holding_a_click():
    a, b, c = _square(0, 0, 10), _square(8, 8, 10), _square(0, 20, 10)  # a-b IoU = 4/196
    positives = [np.array([[5.0, 5.0]]), np.array([[15.0, 15.0]]), np.array([[25.0, 5.0]])]
    assert find_neighbours([a, b, c], positives, [0, 1, 2], iou_threshold=0.1) == {}
    assert find_neighbours([a, b, c], positives, [0, 1, 2], iou_threshold=0.01) == {0: [1], 1: [0]}
    big = _square(0, 0, 30)  # holds every other click
    assert find_neighbours([big, b, c], positives, [0], iou_threshold=0.5) == {0: [1, 2]}
    assert find_neighbours([big, b, c], Clicks(positives), [0], iou_threshold=0.5) == {0: [1, 2]}


def test_the_click_index_finds_clicks_inside_and_on_the_edge_of_each_box():
    clicks = Clicks([np.array([[5.0, 5.0], [40.0, 40.0]]), np.zeros((0, 2)), np.array([[10.0, 2.0]])])
    box, owner = clicks.owners_in(np.array([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 50.0, 50.0], [60, 60, 70, 70]]))
    assert sorted(zip(box.tolist(), owner.tolist())) == [(0, 0), (0, 2), (1, 0)]
    assert len(clicks) == 3 and clicks[1].shape == (0, 2)


def test_second_pass_gets_the_neighbours_positive_clicks_as_negatives():
    stub = SquarePredictor(half=12)
    stub.set_chip(np.zeros((256, 256, 3), np.uint8))
    clicks = [np.array([[50.5, 50.5]]), np.array([[60.5, 50.5]]), np.array([[150.5, 150.5]])]
    prompts = [Prompt(p, np.array([1])) for p in clicks]
    first = stub.predict(prompts)
    redo, neighbours = calibrate(prompts, first, clicks, [0, 1, 2], stub.predict, 0.1)
    assert neighbours == {0: [1], 1: [0]}
    second_call = stub.calls[-1]
    assert len(second_call) == 2
    np.testing.assert_array_equal(second_call[0].points, [[50.5, 50.5], [60.5, 50.5]])
    np.testing.assert_array_equal(second_call[0].labels, [1, 0])
    np.testing.assert_array_equal(second_call[1].points, [[60.5, 50.5], [50.5, 50.5]])
    assert shared_pixels(redo[0], redo[1]) < shared_pixels(first[0], first[1])
    assert not contains_points(redo[0], clicks[1]) and not contains_points(redo[1], clicks[0])


@pytest.mark.parametrize("seed", range(5))
def test_resolution_leaves_no_shared_pixel_and_the_higher_logit_wins(seed):
    rng = np.random.default_rng(seed)
    patches = []
    for _ in range(12):
        h, w = rng.integers(5, 30, 2)
        logits = rng.normal(0.5, 1.0, (h, w)).astype(np.float32)
        patches.append(MaskPatch(int(rng.integers(0, 40)), int(rng.integers(0, 40)), logits, 0.5))
    before = [p.logits.copy() for p in patches]
    canvas_max = np.full((80, 80), -np.inf)
    claims = np.zeros((80, 80), int)
    for p in patches:
        window = (slice(p.row0, p.row0 + p.shape[0]), slice(p.col0, p.col0 + p.shape[1]))
        np.maximum(canvas_max[window], np.where(p.logits > 0, p.logits, -np.inf), out=canvas_max[window])
        claims[window] += p.logits > 0
    pairs = resolve_overlaps(patches)
    assert pairs and overlapping_pairs(patches) == set()
    owner_logit = np.full((80, 80), -np.inf)
    for p, old in zip(patches, before):
        assert not (p.mask & ~(old > 0)).any()  # pixels are only taken away
        view = owner_logit[p.row0:p.row0 + p.shape[0], p.col0:p.col0 + p.shape[1]]
        view[p.mask] = old[p.mask]
    contested = claims == 2  # one contest decides these pixels: the higher logit keeps them
    assert contested.sum() > 20
    np.testing.assert_array_equal(owner_logit[contested], canvas_max[contested])
    assert np.isfinite(owner_logit[claims == 1]).all()  # uncontested pixels stay with their only claimant


def test_a_neighbour_known_only_by_its_click_still_becomes_a_negative():
    stub = SquarePredictor(half=12)
    stub.set_chip(np.zeros((256, 256, 3), np.uint8))
    clicks = [np.array([[50.5, 50.5]]), np.array([[60.5, 50.5]])]  # the second is decoded in another chip
    prompts = [Prompt(p, np.array([1])) for p in clicks]
    first = [stub.predict(prompts[:1])[0], None]
    redo, neighbours = calibrate(prompts, first, clicks, [0], stub.predict, 0.1)
    assert neighbours == {0: [1]} and not contains_points(redo[0], clicks[1])


@pytest.mark.parametrize("seed", range(3))
def test_settling_in_turns_gives_what_settling_all_at_once_gives(seed):
    """The pipeline settles a chip's objects against their neighbours (``among``) and the neighbours' own
    pairs later, in their turn; the pixels end with the same owners as when every pair is settled at once."""
    rng = np.random.default_rng(seed)
    patches = [MaskPatch(int(rng.integers(0, 40)), int(rng.integers(0, 40)),
                         rng.normal(0.5, 1.0, tuple(rng.integers(5, 30, 2))).astype(np.float32), 0.5) for _ in range(12)]
    at_once = [MaskPatch(p.row0, p.col0, p.logits.copy(), p.score) for p in patches]
    resolve_overlaps(at_once)
    first_turn = resolve_overlaps(patches, among=5)
    assert first_turn and all(min(pair) < 5 for pair in first_turn)
    assert any(max(pair) >= 5 for pair in overlapping_pairs(patches))  # the others' pairs wait for their turn
    resolve_overlaps(patches)
    for turns, once in zip(patches, at_once):
        np.testing.assert_array_equal(turns.mask, once.mask)


def test_a_crowded_object_gets_only_its_nearest_neighbours_as_negatives():
    stub = SquarePredictor(half=60)
    stub.set_chip(np.zeros((256, 256, 3), np.uint8))
    centre = np.array([[128.5, 128.5]])
    ring = [centre + 40 * np.array([[np.cos(t), np.sin(t)]]) * (1 + k / 10)  # each one a little farther out
            for k, t in enumerate(np.linspace(0, 2 * np.pi, MAX_NEIGHBOURS + 4, endpoint=False))]
    clicks = [centre, *ring]
    prompts = [Prompt(p, np.array([1])) for p in clicks]
    first = stub.predict(prompts)
    _, neighbours = calibrate(prompts, first, clicks, [0], stub.predict, 0.1)
    assert neighbours == {0: list(range(1, MAX_NEIGHBOURS + 1))}  # every ring click is held; the nearest kept
    np.testing.assert_array_equal(stub.calls[-1][0].points[1:], np.vstack(ring[:MAX_NEIGHBOURS]))
