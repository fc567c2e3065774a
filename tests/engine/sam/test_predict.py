import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pointsam_engine.masks import Prompt
from pointsam_engine.sam.cache import EmbeddingCache
from pointsam_engine.sam.model import load_model
from pointsam_engine.sam.predict import ChipPredictor, upsample_region


@pytest.mark.parametrize("seed", range(10))
def test_region_upsampling_equals_full_upsampling(seed):
    gen = torch.Generator().manual_seed(seed)
    low = torch.randn(64, 64, generator=gen) * 0.5 - 1.0
    r, c = torch.randint(0, 60, (2,), generator=gen).tolist()
    low[r:r + 5, c:c + 7] += 3.0
    out_shape = (230, 250)  # a chip cut by the raster edge
    full = F.interpolate(low[None, None], size=(256, 256), mode="bilinear", align_corners=False)[0, 0]
    full = full[:out_shape[0], :out_shape[1]].numpy()
    patch = upsample_region(low, 4, out_shape)
    if patch is None:
        assert not (full > 0).any()
        return
    window = full[patch.row0:patch.row0 + patch.shape[0], patch.col0:patch.col0 + patch.shape[1]]
    np.testing.assert_allclose(patch.logits, window, atol=1e-5)
    assert (full > 0).sum() == patch.mask.sum()


@pytest.fixture
def predictor(tiny_model):
    return ChipPredictor(load_model(str(tiny_model), device="cpu"), EmbeddingCache(64))


def _image(seed=0):
    img = np.random.default_rng(seed).integers(0, 60, (256, 256, 3), dtype=np.uint8)
    img[60:120, 80:160] = 220
    return img


def test_batched_decoding_equals_one_call_per_prompt(predictor):
    predictor.set_chip(_image())
    prompts = [Prompt(np.array([[100.5, 90.5]]), np.array([1])),
               Prompt(np.array([[30.5, 30.5]]), np.array([1])),
               Prompt(np.array([[100.5, 90.5], [10.5, 10.5]]), np.array([1, 0])),
               Prompt(np.array([[200.5, 200.5], [190.5, 200.5]]), np.array([1, 1]))]
    batched = predictor.predict(prompts)
    for prompt, got in zip(prompts, batched):
        alone = predictor.predict([prompt])[0]
        assert (got is None) == (alone is None)
        if got is not None:
            assert (got.row0, got.col0) == (alone.row0, alone.col0)
            np.testing.assert_allclose(got.logits, alone.logits, atol=1e-4)
            assert got.score == pytest.approx(alone.score, abs=1e-5)


def test_single_click_keeps_the_multimask_output_with_best_iou(predictor):
    predictor.set_chip(_image())
    sam = predictor.model.sam
    coords = torch.tensor([[[100.0, 90.0]]])
    with torch.inference_mode():
        sparse, dense = sam.prompt_encoder(points=(coords, torch.ones(1, 1, dtype=torch.int)), boxes=None, masks=None)
        _, iou = sam.mask_decoder.predict_masks(predictor._embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense)
    got = predictor.predict([Prompt(np.array([[100.5, 90.5]]), np.array([1]))])[0]
    assert got.score == pytest.approx(float(iou[0, 1:].max()), abs=1e-5)


def test_embedding_cache_in_memory_and_on_disk(tiny_model, tmp_path):
    model = load_model(str(tiny_model), device="cpu")
    first = ChipPredictor(model, EmbeddingCache(64, tmp_path / "cache"))
    assert first.set_chip(_image(), key="k1") is True
    assert first.set_chip(_image(), key="k1") is False  # memory hit
    emb = first._embedding.clone()
    second = ChipPredictor(model, EmbeddingCache(64, tmp_path / "cache"))  # a new process: disk only
    assert second.set_chip(_image(), key="k1") is False and second.encoder_passes == 0
    assert torch.equal(second._embedding, emb)
    assert second.set_chip(_image(1), key="k2") is True


def test_memory_cache_is_bounded():
    cache = EmbeddingCache(memory_mb=1)
    block = np.zeros(2**18 // 4 * 3, np.float32)  # 0.75 MB
    cache.put("a", block)
    cache.put("b", block)
    assert cache.get("a") is None and cache.get("b") is not None


def test_box_prompts_batch_apart_from_clicks_and_decode_as_sam_does(predictor):
    predictor.set_chip(_image())
    box = np.array([80.0, 60.0, 160.0, 120.0])
    prompts = [Prompt(np.array([[100.5, 90.5]]), np.array([1])),
               Prompt(np.zeros((0, 2)), np.zeros(0, int), box),
               Prompt(np.array([[100.5, 90.5]]), np.array([1]), box),
               Prompt(np.zeros((0, 2)), np.zeros(0, int), box + 10)]
    batched = predictor.predict(prompts)
    for prompt, got in zip(prompts, batched):
        alone = predictor.predict([prompt])[0]
        assert (got is None) == (alone is None)
        if got is not None:
            np.testing.assert_allclose(got.logits, alone.logits, atol=1e-4)
    sam = predictor.model.sam
    with torch.inference_mode():
        sparse, dense = sam.prompt_encoder(points=None, boxes=torch.tensor([box - 0.5]), masks=None)
        low, iou = sam.mask_decoder.predict_masks(predictor._embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense)
    assert batched[1].score == pytest.approx(float(iou[0, 0]), abs=1e-5), "a box uses the single-mask output"


def test_a_chip_set_last_or_cached_is_set_again_from_its_key_alone(predictor):
    click = [Prompt(np.array([[100.5, 90.5]]), np.array([1]))]
    assert predictor.set_cached_chip("k1", (256, 256)) is False  # nothing held or cached yet
    predictor.set_chip(_image(), key="k1")
    first = predictor.predict(click)[0]
    predictor.set_chip(_image(1), key="k2")
    other = predictor.predict(click)[0]
    assert predictor.set_cached_chip("k3", (256, 256)) is False  # unknown: the chip held stays
    np.testing.assert_array_equal(predictor.predict(click)[0].logits, other.logits)
    assert predictor.set_cached_chip("k1", (256, 256)) is True  # from the cache, no pixels, no encoder
    np.testing.assert_array_equal(predictor.predict(click)[0].logits, first.logits)
    assert predictor.set_cached_chip("k1", (100, 100)) is True  # the chip held; its image's shape bounds masks
    assert predictor.predict([Prompt(np.array([[90.5, 90.5]]), np.array([1]))])[0].mask.shape[0] <= 100
    assert predictor.encoder_passes == 2
