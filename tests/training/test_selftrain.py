"""One self-training step: the calibrated teacher, its views, the anchor and the focal term."""

import numpy as np
import pytest
import torch

from pointsam_engine.demo.scenes import render
from pointsam_engine.masks import MaskPatch, Prompt
from pointsam_engine.sam.model import load_model
from training import selftrain
from training.augment import Dihedral
from training.selftrain import SelfTrainOptions, teacher_masks

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_calibration_gives_an_overlapping_object_its_neighbours_clicks_as_negatives():
    square = np.full((8, 8), -5.0)
    square[1:6, 1:6] = 5.0
    first = [MaskPatch(0, 0, square, 0.9), MaskPatch(0, 0, square.copy(), 0.9), MaskPatch(0, 0, -square, 0.9)]
    asked = []

    def fake_masks(prompts):
        if not asked:
            asked.append(None)
            return first
        asked.append(prompts)
        return [MaskPatch(0, 0, np.full((8, 8), -1.0), 0.5) for _ in prompts]

    positives = [np.array([[4.0, 4.0]]), np.array([[6.0, 6.0]]), np.array([[14.0, 14.0]])]  # chip px; masks at 1/2
    prompts = [Prompt(p, np.ones(1, int)) for p in positives]
    patches, neighbours = teacher_masks(fake_masks, prompts, positives, np.array([0, 2]), SelfTrainOptions(), scale=2.0)
    assert neighbours == {0: [1]}  # object 2 does not overlap anyone; object 1 is not trained
    again = asked[1][0]
    assert again.points.tolist() == [[4.0, 4.0], [6.0, 6.0]] and again.labels.tolist() == [1, 0]
    assert (patches[0].logits < 0).all() and patches[1] is first[1]


def test_the_anchor_is_the_base_models_masks_whatever_the_adapter_has_learnt():
    from pointsam_engine.sam.lora import add_lora
    from pointsam_engine.sam.model import DEFAULT_MODEL

    scene = render("buildings", 256, seed=7302)
    image = np.ascontiguousarray(scene.image.transpose(1, 2, 0))
    prompts = [Prompt(c[None], np.ones(1, int)) for c in scene.clicks[:6]]
    sam = load_model(DEFAULT_MODEL, device="cpu").sam.eval()
    with torch.no_grad():
        before = [p.logits > 0 for p in selftrain.kept_masks(sam, selftrain.embed(sam, image), prompts)]
        torch.manual_seed(0)  # A's initialisation
        add_lora(sam, rank=2)
        for name, p in sam.named_parameters():
            if "lora_" in name and "_b." in name:
                p.normal_(0, 3.0, generator=torch.Generator().manual_seed(3))
        adapted = [p.logits > 0 for p in selftrain.kept_masks(sam, selftrain.embed(sam, image), prompts)]
    anchor = selftrain.base_masks(sam, image, prompts).numpy()
    assert np.array_equal(anchor, np.stack(before))
    assert sum(int((a != b).sum()) for a, b in zip(adapted, before)) > 0.02 * sum(int(b.sum()) for b in before)


@pytest.mark.parametrize("view", [Dihedral(True, False, False), Dihedral(False, True, True), Dihedral(True, True, False)])
def test_a_teacher_of_all_eight_views_gives_the_same_masks_whichever_weak_view_it_starts_from(view):
    from pointsam_engine.sam.model import DEFAULT_MODEL

    scene = render("buildings", 256, seed=7303)
    image = np.ascontiguousarray(scene.image.transpose(1, 2, 0))
    prompts = [Prompt(c[None], np.ones(1, int)) for c in scene.clicks[:4]]
    moved = [Prompt(view.points(p.points, 256), p.labels) for p in prompts]
    sam = load_model(DEFAULT_MODEL, device="cpu").sam.eval()
    with torch.no_grad():
        here = selftrain.TeacherViews(sam, image, 8).masks(prompts)
        there = selftrain.TeacherViews(sam, view.image(image), 8).masks(moved)
        single = selftrain.TeacherViews(sam, image, 1).masks(prompts)
    for a, b in zip(here, there):  # a mix-up of x and y in prompts or logits breaks this
        np.testing.assert_allclose(a.logits, view.restore(b.logits), atol=1e-4)
        assert a.score == pytest.approx(b.score, abs=1e-5)
    assert any((a.mask != s.mask).any() for a, s in zip(here, single))  # the views do change the pseudo-labels


def test_a_teacher_takes_one_to_eight_views():
    with pytest.raises(ValueError, match="teacher_views"):
        selftrain.TeacherViews(None, np.zeros((8, 8, 3), np.uint8), 9)


def test_the_anchor_weight_adds_the_anchor_term_to_the_step_loss(scene):
    from pointsam_engine.config import SegmentConfig
    from pointsam_engine.sam.lora import add_lora
    from pointsam_engine.sam.model import DEFAULT_MODEL
    from training.regions import load_region

    sam = load_model(DEFAULT_MODEL, device="cpu").sam
    add_lora(sam, rank=2)
    region = load_region(0, scene["raster"], scene["points"], SegmentConfig(), 256, val_fraction=0.0,
                         rng=np.random.default_rng(0))
    chip = next(c for c in region.chips if len(c.owned))
    losses = {}
    for weight in (0.0, 2.0):
        opts = SelfTrainOptions(max_objects=4, prototypes=False, anchor_weight=weight)
        losses[weight] = selftrain.selftrain_step(sam, chip, opts, np.random.default_rng(5))
    assert "anchor" not in losses[0.0].terms and losses[2.0].terms["anchor"] > 0
    total = losses[0.0].terms["loss"] + 2.0 * losses[2.0].terms["anchor"]
    assert losses[2.0].terms["loss"] == pytest.approx(total, rel=1e-5)


def test_the_self_training_focal_term_weighs_object_and_background_alike():
    from training.losses import focal_loss

    logits, target = torch.randn(2, 16, 16), (torch.rand(2, 16, 16) > 0.7).float()
    flipped = focal_loss(-logits, 1 - target, alpha=selftrain.FOCAL_ALPHA)
    assert torch.allclose(focal_loss(logits, target, alpha=selftrain.FOCAL_ALPHA), flipped)
