"""FINCH clustering (Sarfraz, Sharma and Stiefelhagen, CVPR 2019) with the cosine metric; numpy and scipy only.

FINCH is parameter-free. Each sample is linked to its first neighbour, the other sample with the
highest cosine similarity. Samples i and j are joined when j is i's first neighbour, i is j's, or
both share a first neighbour. The connected components of that graph are the first partition.
The same step then runs on the cluster means (means of the original features), which gives a
hierarchy of ever coarser partitions, ending with a single cluster.

PointSAM takes the means of the coarsest partition that still has at least two clusters as its
prototypes (:func:`coarsest_partition`, :func:`cluster_means`). The authors' code crashes when the
first partition is already one cluster; here that partition is returned (see the function docstrings).
"""

from __future__ import annotations

from typing import List

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

__all__ = ["cluster_means", "coarsest_partition", "finch"]

_SIMILARITY_BYTES = 64 * 2**20  # similarity rows computed at once, so large sets stay within memory


def _as_features(features) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D array (samples, channels), got shape {x.shape}")
    return x


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _first_neighbours(x: np.ndarray) -> np.ndarray:
    """Index of each row's most cosine-similar other row (ties: the lowest index)."""
    xn = _normalise(x)
    n = len(xn)
    step = max(1, _SIMILARITY_BYTES // (8 * n))
    nearest = np.empty(n, dtype=np.int64)
    for start in range(0, n, step):
        sim = xn[start:start + step] @ xn.T
        rows = np.arange(len(sim))
        sim[rows, start + rows] = -np.inf
        nearest[start:start + step] = sim.argmax(axis=1)
    return nearest


def _first_neighbour_partition(x: np.ndarray) -> np.ndarray:
    """Labels of the connected components of the first-neighbour graph of the rows of ``x``."""
    n = len(x)
    links = sparse.csr_matrix((np.ones(n), (np.arange(n), _first_neighbours(x))), shape=(n, n))
    # (G + I)(G + I)^T links i and j if one is the other's first neighbour or they share one.
    g = links + sparse.identity(n, format="csr")
    _, labels = connected_components(g @ g.T, directed=False)
    return labels.astype(np.int64)


def _group_means(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    k = int(labels.max()) + 1
    onehot = sparse.csr_matrix((np.ones(len(labels)), (labels, np.arange(len(labels)))), shape=(k, len(labels)))
    counts = np.asarray(onehot.sum(axis=1))
    return (onehot @ x) / counts


def finch(features: np.ndarray) -> List[np.ndarray]:
    """All FINCH partitions of ``features``, finest first.

    Args:
        features: (N, C) samples; only their directions matter (cosine metric).

    Returns:
        A list of (N,) int64 label arrays with labels 0..k-1. Each partition merges whole clusters
        of the previous one and has strictly fewer clusters; the last has a single cluster. Empty
        for N = 0; ``[zeros(1)]`` for N = 1.
    """
    x = _as_features(features)
    if len(x) == 0:
        return []
    labels = np.zeros(len(x), dtype=np.int64)
    if len(x) == 1:
        return [labels]
    partitions, points, labels = [], x, np.arange(len(x))
    while True:
        labels = _first_neighbour_partition(points)[labels]
        partitions.append(labels)
        if labels.max() == 0:
            return partitions
        points = _group_means(x, labels)


def coarsest_partition(features: np.ndarray, min_clusters: int = 2) -> np.ndarray:
    """The coarsest FINCH partition with at least ``min_clusters`` clusters.

    When no partition has that many clusters (N < 2, all features identical, or FINCH's first
    partition already being one cluster), the finest partition is returned instead, which then
    has fewer than ``min_clusters`` clusters, usually one. Callers that need two clusters must check.

    Args:
        features: (N, C) samples.
        min_clusters: the least number of clusters wanted, at least 1.

    Returns:
        (N,) int64 labels 0..k-1; an empty array for N = 0.
    """
    if min_clusters < 1:
        raise ValueError(f"min_clusters must be at least 1, got {min_clusters}")
    partitions = finch(features)
    if not partitions:
        return np.zeros(0, dtype=np.int64)
    wide = [p for p in partitions if p.max() + 1 >= min_clusters]
    return wide[-1] if wide else partitions[0]


def cluster_means(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """L2-normalised mean of the features of each cluster.

    Args:
        features: (N, C) samples. The means are of these vectors as given, so pass unit vectors
            to average directions.
        labels: (N,) cluster labels 0..k-1, each used at least once.

    Returns:
        (k, C) float64 unit vectors, row j for label j; (0, C) when N = 0.
    """
    x = _as_features(features)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(x),):
        raise ValueError(f"labels must have shape ({len(x)},), got {labels.shape}")
    if len(x) == 0:
        return np.zeros((0, x.shape[1]))
    if labels.min() < 0 or np.bincount(labels).min() == 0:
        raise ValueError("labels must be 0..k-1 with every label used at least once")
    return _normalise(_group_means(x, labels))
