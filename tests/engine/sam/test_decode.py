"""One decoding for inference and training: the engine keeps exactly the mask training scores as its pick."""

import numpy as np
import pytest
import torch

from pointsam_engine.masks import Prompt
from pointsam_engine.sam.cache import EmbeddingCache
from pointsam_engine.sam.decode import (
    DECODER_BATCH_MB,
    GPU_DECODER_BATCH,
    decode_groups,
    decoder_batch_for,
    embed,
    layout,
    multimask,
)
from pointsam_engine.sam.model import OFFICIAL_ARCHS, build_sam, load_model
from pointsam_engine.sam.predict import ChipPredictor, upsample_region
from training.losses import mask_iou
from training.objective import mask_terms

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = {
    "single click": [Prompt(np.array([[100.5, 90.5]]), np.array([1])), Prompt(np.array([[30.5, 200.5]]), np.array([1]))],
    "multi click": [Prompt(np.array([[100.5, 90.5], [10.5, 10.5]]), np.array([1, 0])),
                    Prompt(np.array([[200.5, 200.5], [190.5, 200.5]]), np.array([1, 1]))],
}


def _image():
    img = np.random.default_rng(0).integers(0, 60, (256, 256, 3), dtype=np.uint8)
    img[60:120, 80:160] = 220
    img[180:230, 170:220] = 160
    return img


@pytest.fixture(scope="module")
def chip(tiny_model):
    predictor = ChipPredictor(load_model(str(tiny_model), device="cpu"), EmbeddingCache(0))
    predictor.set_chip(_image())
    return predictor


def _targets(prompts, size=256):
    """A disc of radius 40 around each prompt's first click, so candidate masks score differently."""
    rows, cols = np.mgrid[:size, :size] + 0.5
    return torch.from_numpy(np.stack([np.hypot(cols - p.points[0, 0], rows - p.points[0, 1]) < 40 for p in prompts]))


@pytest.mark.parametrize("kind", PROMPTS)
def test_the_engine_keeps_the_mask_training_scores_as_its_pick(chip, kind):
    prompts = PROMPTS[kind]
    kept = chip.predict(prompts)
    sam = chip.model.sam
    with torch.no_grad():
        embedding = embed(sam, _image())  # training's path to the embedding: the engine's own
        assert torch.allclose(embedding, chip._embedding, atol=1e-5)
        decoded = decode_groups(sam, embedding, prompts)
        targets = _targets(prompts)
        terms = mask_terms(decoded, targets)
    for batch in decoded:
        assert batch.logits.shape[1] == (3 if multimask(prompts[batch.indices[0]]) else 1)
        pooled = torch.nn.functional.adaptive_avg_pool2d(targets[batch.indices][:, None].float(), batch.logits.shape[-2:])
        for b, i in enumerate(batch.indices):
            engine = kept[i]
            assert engine is not None, "the test needs a non-empty mask to compare"
            matches = [k for k in range(batch.iou.shape[1]) if abs(float(batch.iou[b, k]) - engine.score) < 1e-5]
            assert len(matches) == 1, "the engine's score is the IoU head's prediction for one of the masks training reads"
            (k,) = matches
            assert k == int(batch.kept()[b]) == int(batch.iou[b].argmax())
            again = upsample_region(batch.logits[b, k], 256 // batch.logits.shape[-1], (256, 256))
            assert (again.row0, again.col0) == (engine.row0, engine.col0)
            np.testing.assert_allclose(again.logits, engine.logits, atol=1e-4)
            # training's "IoU the engine would get" is the IoU of exactly this mask
            assert float(terms.iou[i]) == pytest.approx(float(mask_iou(batch.logits[b, k], pooled[b, 0])))


def test_single_positive_clicks_read_sams_three_masks_and_other_prompts_mask_zero(chip):
    sam = chip.model.sam
    one_negative = Prompt(np.array([[100.5, 90.5]]), np.array([0]))
    box = Prompt(np.array([[100.5, 90.5]]), np.array([1]), np.array([80.0, 60.0, 160.0, 120.0]))
    prompts = [*PROMPTS["single click"], one_negative, box, *PROMPTS["multi click"]]
    assert [multimask(p) for p in prompts] == [True, True, False, False, False, False]
    with torch.no_grad():
        decoded = decode_groups(sam, chip._embedding, prompts)
        coords = torch.tensor([[[100.0, 90.0]]])  # our pixel centre (100.5, 90.5) is SAM's pixel (100, 90)
        sparse, dense = sam.prompt_encoder(points=(coords, torch.ones(1, 1, dtype=torch.int)), boxes=None, masks=None)
        logits, iou = sam.mask_decoder.predict_masks(chip._embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense)
    assert sorted(i for batch in decoded for i in batch.indices) == list(range(len(prompts)))
    assert all(len({layout(prompts[i]) for i in batch.indices}) == 1 for batch in decoded)
    first = next(batch for batch in decoded if 0 in batch.indices)
    row = first.indices.index(0)
    torch.testing.assert_close(first.iou[row], iou[0, 1:], atol=1e-5, rtol=0)
    torch.testing.assert_close(first.logits[row], logits[0, 1:], atol=1e-4, rtol=0)


def test_batches_hold_at_most_the_decoder_batch(chip):
    prompts = [Prompt(np.array([[20.5 + 10 * i, 40.5]]), np.array([1])) for i in range(7)]
    with torch.no_grad():
        decoded = decode_groups(chip.model.sam, chip._embedding, prompts, batch=3)
    assert [len(batch.indices) for batch in decoded] == [3, 3, 1]


def test_a_full_size_sam_decodes_fewer_prompts_together_than_the_bundled_model(chip):
    """Batches past the CPU's caches cost more per prompt: the default batch follows the image-side work a prompt
    has of its own, which a 64² x 256 grid has 8x of the bundled model's 32² x 128."""
    with torch.device("meta"):  # the layout only: no weights
        vit_b = build_sam(OFFICIAL_ARCHS["vit_b"])
    small, large = decoder_batch_for(chip.model.sam), decoder_batch_for(vit_b)
    assert 1 <= large < small and chip.decoder_batch == small
    assert large * 3 * 64 * 64 * 256 * 4 <= DECODER_BATCH_MB * 2 ** 20
    assert decoder_batch_for(vit_b, "cuda:0") == GPU_DECODER_BATCH  # caches do not set a GPU's batch
    assert ChipPredictor(chip.model, EmbeddingCache(0), decoder_batch=3).decoder_batch == 3  # a given batch wins
