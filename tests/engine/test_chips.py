import numpy as np
import pytest

from pointsam_engine.chips import Chip, centrality, plan_chips, plan_per_point


def _clustered(seed=0, n_clusters=12, per_cluster=40, spread=120.0, extent=6000):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(300, extent - 300, (n_clusters, 2))
    pts = np.concatenate([c + rng.normal(0, spread, (per_cluster, 2)) for c in centres])
    return np.clip(pts, 0, extent - 1e-3)


@pytest.mark.parametrize("seed", range(5))
def test_every_point_well_inside_its_own_chip(seed):
    pts = _clustered(seed)
    size, margin, grid = 1024, 256, (6000, 6000)
    plan = plan_chips(pts[:, 0], pts[:, 1], grid, size, margin)
    for i, (r, c) in enumerate(pts):
        chip = plan.chips[plan.owner[i]]
        assert 0 <= chip.row0 and chip.row0 + size <= grid[0] and 0 <= chip.col0 and chip.col0 + size <= grid[1]
        assert centrality(np.array([r]), np.array([c]), chip, grid)[0] >= margin
    # the owner is the chip where the point is most central
    scores = np.stack([centrality(pts[:, 0], pts[:, 1], chip, grid) for chip in plan.chips])
    np.testing.assert_array_equal(scores.max(axis=0), scores[plan.owner, np.arange(len(pts))])


def test_dense_layer_needs_far_fewer_passes_than_points():
    pts = _clustered(1, n_clusters=10, per_cluster=50, spread=100.0)
    plan = plan_chips(pts[:, 0], pts[:, 1], (6000, 6000), 1024, 256)
    naive = plan_per_point(pts[:, 0], pts[:, 1], (6000, 6000), 1024)
    assert naive.encoder_passes == len(pts) == 500
    assert plan.encoder_passes <= len(pts) / 10
    assert sorted(np.concatenate(plan.assigned).tolist()) == list(range(len(pts)))


def test_points_at_raster_edges_and_raster_smaller_than_chip():
    # corners: raster edges cut nothing, so points there count as well inside
    rows, cols = np.array([0.5, 0.5, 1999.5, 1999.5]), np.array([0.5, 2999.5, 0.5, 2999.5])
    plan = plan_chips(rows, cols, (2000, 3000), 1024, 256)
    assert plan.encoder_passes == 4
    small = plan_chips(np.array([10.0, 150.0]), np.array([20.0, 290.0]), (200, 300), 1024, 256)
    assert small.chips == [Chip(0, 0, 0, 1024)]


def test_context_lists_neighbours_inside_the_chip_that_another_chip_owns():
    rows = np.array([100.0, 100.0, 100.0])
    cols = np.array([100.0, 700.0, 1400.0])
    plan = plan_chips(rows, cols, (1000, 3000), 1024, 256)
    for k, chip in enumerate(plan.chips):
        inside = np.flatnonzero(centrality(rows, cols, chip, (1000, 3000)) > 0)
        assert set(plan.assigned[k]) | set(plan.context[k]) == set(inside)
        assert not set(plan.assigned[k]) & set(plan.context[k])


def test_each_chip_is_settled_once_after_every_chip_it_meets():
    from pointsam_engine.chips import finalization_schedule, neighbours

    pts = _clustered(2)
    plan = plan_chips(pts[:, 0], pts[:, 1], (6000, 6000), 1024, 256)
    schedule, near = finalization_schedule(plan.chips), neighbours(plan.chips)
    settled_at = {j: k for k, js in enumerate(schedule) for j in js}
    assert sorted(settled_at) == list(range(len(plan.chips)))
    for j, k in settled_at.items():
        assert k >= j and all(m <= k for m in near[j])


def test_owner_and_context_follow_the_centrality_of_every_chip():
    """Each point is owned by the chip where it is most central (the first on ties); each chip's context is
    every other point inside it: checked against scoring every point in every chip."""
    rng = np.random.default_rng(5)
    for _ in range(30):
        shape = (int(rng.integers(200, 3000)), int(rng.integers(200, 3000)))
        rows, cols = rng.integers(0, shape[0], 200).astype(float), rng.integers(0, shape[1], 200).astype(float)
        plan = plan_chips(rows, cols, shape, 256, 32)
        scores = np.stack([centrality(rows, cols, chip, shape) for chip in plan.chips])
        assert np.array_equal(plan.owner, scores.argmax(axis=0))
        for k in range(len(plan.chips)):
            assert np.array_equal(plan.assigned[k], np.flatnonzero(plan.owner == k))
            assert np.array_equal(plan.context[k], np.flatnonzero((scores[k] > 0) & (plan.owner != k)))
