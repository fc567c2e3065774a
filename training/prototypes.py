"""Prototype-based regularisation (PBR) of PointSAM, with a loss that has a gradient.

What the paper intends. Self-training on the model's own pseudo-labels can let the adapted image
features drift away from what SAM saw at the start, and errors then pile up. PBR anchors them:
the *target prototypes* T summarise the features of the unadapted model on the training images,
the *predicted prototypes* P summarise the current model's features, and a loss pulls each
predicted prototype toward the target it is matched to. Both sets are FINCH cluster means (the
coarsest partition with at least two clusters) and are matched one-to-one by the Hungarian
algorithm on the cost 1 - cos(p_i, t_j). The paper's loss is the mean matched cost, weighted 0.1.

What the authors' code does. It computes that loss from Python lists and ``.item()`` floats, so
it is a constant with no gradient and PBR only changes the logged loss. We do not copy that.

What this module computes.

1. Instance features are mask-average pooled from the image embedding (:func:`instance_features`);
   the paper reads one embedding cell under the first positive point, and its author suggested
   mask pooling (issue #2). Masks are area-resized to the embedding grid.
2. T: :func:`target_prototypes`, once before training, from the base model's features.
3. A FIFO :class:`PrototypeBank` holds detached, L2-normalised teacher features. When it is full,
   and then every ``interval`` iterations, FINCH on the bank gives P (:func:`predicted_prototypes`)
   and :func:`match_prototypes` pairs P with T. :class:`PrototypeRegularizer` keeps that schedule.
4. The loss (:func:`prototype_loss`) reaches the current batch's *student* instance features f_i,
   which carry a gradient. Each f_i goes to its nearest predicted prototype a(i) by cosine, and

       L = mean over i with a(i) matched of (1 - cos(f_i, t_match(a(i)))).

   Features whose prototype has no partner (when |P| > |T|) are left out; if none is left, L = 0.

Why this is the paper's loss made trainable. P's prototype p is the normalised mean of the unit
features in its cluster, and for unit vectors with mean m and a unit target t with m.t >= 0,
1 - cos(p, t) = 1 - (m.t)/|m| <= 1 - m.t = mean_i(1 - cos(f_i, t)). So the paper's matched cost for
that cluster is bounded by the mean of our per-instance costs over its members. Pulling the members
toward t pulls p toward t: teacher and student share their weights, so moving the student's features
moves the teacher features that the bank collects, and P follows at the next clustering. The current
batch stands in for the cluster's members, as a stochastic estimate that carries a gradient. The
mean is over instances, not pairs, so populous prototypes weigh more.
"""

from __future__ import annotations

from collections import deque
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from pointsam_engine.sam.decode import image_embedding

from .finch import cluster_means, coarsest_partition

__all__ = ["PrototypeBank", "PrototypeRegularizer", "assign_prototypes", "instance_features", "match_prototypes",
           "predicted_prototypes", "prototype_loss", "target_prototypes"]

Pairs = Tuple[np.ndarray, np.ndarray]


def instance_features(embedding: torch.Tensor, masks: torch.Tensor,
                      image_index: Union[int, torch.Tensor] = 0) -> torch.Tensor:
    """Mask-average pooled embedding features, one per instance; differentiable in ``embedding``.

    Args:
        embedding: (B, C, h, w) image-encoder output (a SAM 2.1 embedding: its image embedding).
        masks: (N, H, W) bool or float masks over the same extent as the embedding (the padded
            model-input frame), at any resolution; they are area-resized to (h, w).
        image_index: the image of each mask in the batch, an int or an (N,) integer tensor.

    Returns:
        (N, C) features, the weighted mean of the embedding under each resized mask. An empty
        mask gives a zero row, which :class:`PrototypeBank` and :func:`prototype_loss` ignore.
    """
    embedding = image_embedding(embedding)  # SAM 2.1's: its image embedding, not its high-resolution maps
    n = masks.shape[0]
    weights = F.adaptive_avg_pool2d(masks.to(embedding.dtype)[:, None], embedding.shape[-2:])[:, 0]
    per_image = torch.einsum("nhw,bchw->nbc", weights, embedding)  # (N, B, C); B is small
    index = torch.as_tensor(image_index, device=embedding.device).expand(n)
    pooled = per_image[torch.arange(n, device=embedding.device), index]
    return pooled / weights.sum(dim=(-2, -1)).clamp_min(1e-12)[:, None]


def _nonzero_rows(features: torch.Tensor) -> torch.Tensor:
    return features.detach().abs().sum(dim=-1) > 0


class PrototypeBank:
    """A FIFO memory of detached, L2-normalised instance features (PointSAM: 512, or 128 for NWPU).

    Args:
        capacity: the most features kept; pushing more drops the oldest.
    """

    def __init__(self, capacity: int):
        if capacity < 2:
            raise ValueError(f"the prototype bank needs a capacity of at least 2, got {capacity}")
        self.capacity = capacity
        self._items: deque = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def is_full(self) -> bool:
        return len(self._items) == self.capacity

    def push(self, features: torch.Tensor) -> None:
        """Append (N, C) features, oldest first; zero rows (empty masks) are skipped."""
        features = features.detach()[_nonzero_rows(features)]
        self._items.extend(F.normalize(features.float(), dim=-1).cpu().unbind(0))

    def features(self) -> torch.Tensor:
        """(M, C) float32 CPU tensor of the stored features, oldest first."""
        if not self._items:
            raise ValueError("the prototype bank is empty; push features first")
        return torch.stack(list(self._items))

    def clear(self) -> None:
        self._items.clear()

    def state_dict(self) -> dict:
        """``{"capacity", "features"}``, for resuming training."""
        return {"capacity": self.capacity, "features": self.features() if self._items else None}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = int(state["capacity"])
        self._items = deque([] if state["features"] is None else state["features"].unbind(0), maxlen=self.capacity)


def _to_numpy(features) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().float().cpu().numpy()
    return np.asarray(features, dtype=np.float64)


def _finch_prototypes(features) -> torch.Tensor:
    x = _to_numpy(features)
    x = x[np.abs(x).sum(axis=1) > 0]
    if len(x) == 0:
        raise ValueError("no features to build prototypes from (all empty masks?)")
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return torch.from_numpy(cluster_means(x, coarsest_partition(x, min_clusters=2))).float()


def target_prototypes(features: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
    """Target prototypes T from the base model's instance features, computed once before training.

    The features are L2-normalised (zero rows dropped), clustered with FINCH, and the unit means of
    the coarsest partition with at least two clusters are returned. When FINCH finds only one
    cluster, T has a single row.

    Args:
        features: (N, C) instance features, e.g. :func:`instance_features` of the unadapted model.

    Returns:
        (K, C) float32 CPU tensor of unit vectors.
    """
    return _finch_prototypes(features)


def predicted_prototypes(bank: PrototypeBank) -> torch.Tensor:
    """Predicted prototypes P: FINCH on the bank, as :func:`target_prototypes`; (K, C) float32 CPU."""
    return _finch_prototypes(bank.features())


def match_prototypes(predicted: torch.Tensor, target: torch.Tensor) -> Pairs:
    """One-to-one matching of predicted to target prototypes minimising the sum of 1 - cos.

    Args:
        predicted: (P, C) prototypes.
        target: (T, C) prototypes; P and T may differ.

    Returns:
        ``(rows, cols)`` int64 arrays of min(P, T) pairs: predicted ``rows[k]`` goes with target ``cols[k]``.
    """
    p = F.normalize(predicted.detach().double().cpu(), dim=-1)
    t = F.normalize(target.detach().double().cpu(), dim=-1)
    rows, cols = linear_sum_assignment((1 - p @ t.T).numpy())
    return rows.astype(np.int64), cols.astype(np.int64)


def assign_prototypes(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """(N,) index of each feature's most cosine-similar prototype; no gradient."""
    with torch.no_grad():
        f = F.normalize(features.float(), dim=-1)
        p = F.normalize(prototypes.to(f.device, torch.float32), dim=-1)
        return (f @ p.T).argmax(dim=-1)


def prototype_loss(student_features: torch.Tensor, assignments: Optional[torch.Tensor], predicted: torch.Tensor,
                   target: torch.Tensor, pairs: Pairs) -> torch.Tensor:
    """Mean 1 - cos between each student feature and the target matched to its predicted prototype.

    Args:
        student_features: (N, C) current-batch instance features, with their gradient.
        assignments: (N,) predicted-prototype index of each feature, or None for the nearest by cosine.
        predicted: (P, C) predicted prototypes.
        target: (T, C) target prototypes.
        pairs: ``(rows, cols)`` from :func:`match_prototypes`.

    Returns:
        A scalar tensor. Zero rows of ``student_features`` (empty masks) and features whose
        prototype has no matched target are left out; with none left the loss is 0, still
        connected to ``student_features`` so ``backward`` works.
    """
    if assignments is None:
        assignments = assign_prototypes(student_features, predicted)
    device = student_features.device
    partner = torch.full((len(predicted),), -1, dtype=torch.long, device=device)
    partner[torch.as_tensor(pairs[0], device=device)] = torch.as_tensor(pairs[1], device=device)
    matched = partner[assignments.to(device)]
    keep = (matched >= 0) & _nonzero_rows(student_features)
    if not keep.any():
        return student_features.sum() * 0
    f = F.normalize(student_features[keep], dim=-1)
    t = F.normalize(target.to(device, student_features.dtype), dim=-1)[matched[keep]]
    return (1 - (f * t).sum(dim=-1)).mean()


class PrototypeRegularizer:
    """The online half of PBR: bank, scheduled re-clustering and matching, and the loss.

    Args:
        target: (K, C) target prototypes from :func:`target_prototypes`.
        capacity: bank size (PointSAM: 512; 128 for NWPU).
        interval: iterations between re-clusterings once the bank is full (PointSAM: 30).
    """

    def __init__(self, target: torch.Tensor, capacity: int = 512, interval: int = 30):
        self.target, self.interval = target, interval
        self.bank = PrototypeBank(capacity)
        self.predicted: Optional[torch.Tensor] = None
        self.pairs: Optional[Pairs] = None
        self._last: Optional[int] = None

    def update(self, iteration: int, teacher_features: torch.Tensor) -> bool:
        """Push teacher features; re-cluster the bank when it is first full, then every ``interval``.

        Returns:
            True when the predicted prototypes and their matching were refreshed.
        """
        self.bank.push(teacher_features)
        if not self.bank.is_full or (self._last is not None and iteration - self._last < self.interval):
            return False
        self.predicted = predicted_prototypes(self.bank)
        self.pairs = match_prototypes(self.predicted, self.target)
        self._last = iteration
        return True

    def loss(self, student_features: torch.Tensor) -> torch.Tensor:
        """:func:`prototype_loss` against the latest matching; 0 until the bank was first clustered."""
        if self.predicted is None:
            return student_features.sum() * 0
        return prototype_loss(student_features, None, self.predicted, self.target, self.pairs)

    def state_dict(self) -> dict:
        """Everything needed to continue exactly where training stopped."""
        pairs = None if self.pairs is None else [np.asarray(p).tolist() for p in self.pairs]
        return {"target": self.target, "interval": self.interval, "bank": self.bank.state_dict(),
                "predicted": self.predicted, "pairs": pairs, "last": self._last}

    @classmethod
    def from_state_dict(cls, state: dict) -> "PrototypeRegularizer":
        reg = cls(state["target"], state["bank"]["capacity"], state["interval"])
        reg.bank.load_state_dict(state["bank"])
        reg.predicted, reg._last = state["predicted"], state["last"]
        reg.pairs = None if state["pairs"] is None else tuple(np.asarray(p, dtype=np.int64) for p in state["pairs"])
        return reg
