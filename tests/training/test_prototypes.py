import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.prototypes import (
    PrototypeBank,
    PrototypeRegularizer,
    assign_prototypes,
    instance_features,
    match_prototypes,
    prototype_loss,
    target_prototypes,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _unit(n, dim=8, seed=0):
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_hungarian_pairing_recovers_a_known_permutation():
    target = torch.eye(5)
    perm = np.array([3, 0, 4, 1, 2])
    predicted = 2.0 * target[perm] + 0.05 * _unit(5, 5)  # scale does not matter (cosine cost)
    rows, cols = match_prototypes(predicted, target)
    assert rows.tolist() == list(range(5)) and cols.tolist() == perm.tolist()


def test_hungarian_pairing_with_unequal_counts():
    target = torch.eye(4)
    rows, cols = match_prototypes(target[[2, 0]], target)  # 2 predicted, 4 targets
    assert rows.tolist() == [0, 1] and cols.tolist() == [2, 0]
    rows, cols = match_prototypes(target, target[[3, 1]])  # 4 predicted, 2 targets
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(1, 1), (3, 0)]


def test_prototype_loss_has_a_gradient_and_falls_as_features_move_to_their_targets():
    target = torch.eye(3, 6)
    predicted = target[[2, 0, 1]] + 0.1  # predicted i pairs with target perm[i]
    pairs = match_prototypes(predicted, target)
    assert pairs[1].tolist() == [2, 0, 1]
    feats = (target[[0, 1, 2, 0]] + 0.3 * _unit(4, 6)).requires_grad_(True)
    assignments = torch.tensor([1, 2, 0, 1])  # the predicted prototypes of targets 0, 1, 2, 0
    assert torch.equal(assign_prototypes(feats, predicted), assignments)
    loss = prototype_loss(feats, assignments, predicted, target, pairs)
    loss.backward()
    assert loss.item() > 0 and feats.grad.abs().sum() > 0
    matched = target[[0, 1, 2, 0]]
    with torch.no_grad():
        moved = feats - 0.5 * (feats - matched)
        assert prototype_loss(moved, assignments, predicted, target, pairs) < loss
        assert prototype_loss(matched, assignments, predicted, target, pairs).abs() < 1e-6
    # with assignments left to the function (nearest predicted prototype), the same loss
    torch.testing.assert_close(prototype_loss(feats, None, predicted, target, pairs), loss)


def test_prototype_loss_leaves_out_unmatched_prototypes_and_empty_features():
    target = torch.eye(2, 4)
    predicted = torch.eye(3, 4)  # predicted 2 has no target
    pairs = match_prototypes(predicted, target)
    feats = torch.tensor([[0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    loss = prototype_loss(feats, torch.tensor([2, 0, 1]), predicted, target, pairs)
    torch.testing.assert_close(loss, torch.tensor(1 - 2 ** -0.5))  # only row 1 counts
    nothing = prototype_loss(feats[[0]], torch.tensor([2]), predicted, target, pairs)
    nothing.backward()
    assert nothing.item() == 0


def test_bank_is_first_in_first_out_and_normalises():
    bank = PrototypeBank(capacity=4)
    bank.push(torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.0, 0.0]]))  # the empty (zero) row is skipped
    assert len(bank) == 2 and not bank.is_full
    torch.testing.assert_close(bank.features(), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    bank.push(torch.tensor([[1.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], requires_grad=True))
    assert len(bank) == 4 and bank.is_full
    kept = bank.features()
    assert not kept.requires_grad
    torch.testing.assert_close(kept, torch.tensor([[0.0, 1.0], [2 ** -0.5, 2 ** -0.5], [-1.0, 0.0], [0.0, -1.0]]))
    bank.push(torch.randn(10, 2))
    assert len(bank) == 4
    restored = PrototypeBank(2)
    restored.load_state_dict(bank.state_dict())
    assert restored.capacity == 4 and torch.equal(restored.features(), bank.features())


def test_instance_features_are_area_weighted_mask_means_and_differentiable():
    embedding = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2).requires_grad_(True)
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2, :2] = True  # the whole top-left cell
    masks[1, :2, :] = True  # top row of cells...
    masks[1, 2, 0] = True  # ...and a quarter of the bottom-left cell
    feats = instance_features(embedding, masks, torch.tensor([0, 1, 1]))
    e = embedding.detach()
    expected = torch.stack([e[0, :, 0, 0], (e[1, :, 0, 0] + e[1, :, 0, 1] + 0.25 * e[1, :, 1, 0]) / 2.25,
                            torch.zeros(3)])  # mask 2 is empty: a zero row
    torch.testing.assert_close(feats, expected)
    feats[1].sum().backward()
    assert embedding.grad[1, :, 1, 0].tolist() == pytest.approx([0.25 / 2.25] * 3)
    assert embedding.grad[0].abs().sum() == 0
    torch.testing.assert_close(instance_features(e, masks[:1].float(), 1), e[1:, :, 0, 0])


def test_target_prototypes_from_clustered_features():
    basis = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))[0].T
    centres, offsets = basis[:3], torch.cat([basis[3:], -basis[3:]])[:9]
    feats = torch.cat([torch.cat([c[None], 5 * (c + 0.2 * offsets)]) for c in centres])
    prototypes = target_prototypes(torch.cat([feats, torch.zeros(2, 16)]))  # zero rows are dropped
    assert prototypes.shape == (3, 16) and prototypes.dtype == torch.float32
    rows, cols = match_prototypes(prototypes, centres)
    assert (F.cosine_similarity(prototypes[rows], centres[cols]) > 0.99).all()


def test_regularizer_clusters_when_the_bank_is_full_then_every_interval():
    target = torch.eye(2, 4)
    reg = PrototypeRegularizer(target, capacity=6, interval=3)
    student = torch.tensor([[1.0, 0.2, 0.0, 0.0]], requires_grad=True)
    assert reg.loss(student).item() == 0
    feats = torch.tensor([[1.0, 0.1, 0, 0], [1.0, -0.1, 0, 0], [0.1, 1.0, 0, 0], [-0.1, 1.0, 0, 0]])
    refreshed = [reg.update(it, feats[:2] if it % 2 else feats[2:]) for it in range(8)]
    assert refreshed == [False, False, True, False, False, True, False, False]
    loss = reg.loss(student)
    loss.backward()
    assert loss.item() > 0 and student.grad.abs().sum() > 0
