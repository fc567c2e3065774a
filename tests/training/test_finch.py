import numpy as np
import pytest

from training.finch import cluster_means, coarsest_partition, finch


def _same_clusters(labels, truth):
    """Each true cluster gets one label of its own (equality up to a permutation of labels)."""
    mapping = {t: set(labels[truth == t]) for t in np.unique(truth)}
    return all(len(v) == 1 for v in mapping.values()) and len(set().union(*mapping.values())) == len(mapping)


def _orthonormal(n, dim=16, seed=0):
    return np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, n)))[0].T


def test_three_direction_clusters_of_twenty_in_16d_are_recovered():
    # Each cluster is its centre direction plus 19 samples pushed off it along mutually orthogonal
    # directions, so every sample's first neighbour is its own centre: FINCH's first partition is the
    # truth, and the next one merges all three.
    basis = _orthonormal(16)
    centres, offsets = basis[:3], np.vstack([basis[3:], -basis[3:]])[:19]
    x = np.concatenate([np.vstack([c, c + 0.2 * offsets]) for c in centres])
    truth = np.repeat(np.arange(3), 20)
    labels = coarsest_partition(x)
    assert labels.max() + 1 == 3
    assert _same_clusters(labels, truth)


def test_recursion_on_cluster_means_recovers_clusters_made_of_subclusters():
    # Three clusters, each of two stars (a hub and 4 spokes): the first partition finds the six stars,
    # the second pairs the stars of each cluster.
    basis = _orthonormal(16, seed=1)
    centres, splits, spokes = basis[:3], basis[3:6], basis[6:10]
    x, truth = [], []
    for cluster, (c, f) in enumerate(zip(centres, splits)):
        for hub in (c + 0.1 * f, c - 0.1 * f):
            x += [hub] + [hub + 0.05 * s for s in spokes]
            truth += [cluster] * 5
    x, truth = np.array(x), np.array(truth)
    partitions = finch(x)
    assert [p.max() + 1 for p in partitions] == [6, 3, 1]
    assert _same_clusters(coarsest_partition(x), truth)


def test_partitions_get_strictly_coarser_and_nest():
    x = np.random.default_rng(3).normal(size=(200, 8))
    partitions = finch(x)
    counts = [p.max() + 1 for p in partitions]
    assert counts == sorted(set(counts), reverse=True) and counts[-1] == 1
    for fine, coarse in zip(partitions, partitions[1:]):
        assert all(len(set(coarse[fine == c])) == 1 for c in range(fine.max() + 1))  # whole clusters merge
        assert set(fine) == set(range(fine.max() + 1))  # labels 0..k-1


def test_empty_single_and_two_samples():
    assert finch(np.zeros((0, 4))) == []
    assert coarsest_partition(np.zeros((0, 4))).shape == (0,)
    assert [p.tolist() for p in finch(np.ones((1, 4)))] == [[0]]
    assert coarsest_partition(np.ones((1, 4))).tolist() == [0]
    # two samples are each other's first neighbour: one cluster, whatever min_clusters asks for
    assert coarsest_partition(np.array([[1.0, 0.0], [0.0, 1.0]])).tolist() == [0, 0]


def test_identical_features_give_one_cluster():
    x = np.tile(np.array([[0.3, -1.0, 2.0]]), (10, 1))
    partitions = finch(x)
    assert len(partitions) == 1 and partitions[0].tolist() == [0] * 10
    assert coarsest_partition(x).tolist() == [0] * 10


def test_coarsest_partition_honours_min_clusters():
    x = np.random.default_rng(4).normal(size=(100, 8))
    partitions = finch(x)
    assert coarsest_partition(x, min_clusters=1).max() == 0
    big = coarsest_partition(x, min_clusters=partitions[0].max() + 1)
    assert np.array_equal(big, partitions[0])
    with pytest.raises(ValueError):
        coarsest_partition(x, min_clusters=0)


def test_cluster_means_are_unit_means_per_label():
    x = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0], [1.0, 1.0]])
    means = cluster_means(x, np.array([0, 0, 1, 1, 2]))
    np.testing.assert_allclose(means, [[1, 0], [0, 1], [2 ** -0.5, 2 ** -0.5]])
    with pytest.raises(ValueError):
        cluster_means(x, np.array([0, 0, 2, 2, 2]))  # label 1 unused
