"""The engine's mask decoder is segment-anything's ``MaskDecoder.predict_masks``, its per-chip work done once."""

import pytest
import torch

from pointsam_engine.sam.mask_decoder import image_context, predict_masks
from pointsam_engine.sam.model import SamArch, build_sam, load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = SamArch(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
                image_size=128, patch_size=8, window_size=4, prompt_embed_dim=64, decoder_depth=3,
                decoder_mlp_dim=128, decoder_num_heads=4, iou_head_hidden_dim=32)


def _stock(sam, embedding, sparse, read):
    dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(len(sparse), -1, *embedding.shape[-2:])
    logits, iou = sam.mask_decoder.predict_masks(embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense)
    return logits[:, read], iou[:, read]


def _inputs(sam, prompts, tokens, seed=0):
    generator = torch.Generator().manual_seed(seed)
    channels, grid = sam.prompt_encoder.embed_dim, sam.prompt_encoder.image_embedding_size
    return torch.randn(1, channels, *grid, generator=generator), torch.randn(prompts, tokens, channels, generator=generator)


@pytest.fixture(scope="module", params=["bundled", "three layers"])
def sam(request):
    if request.param == "bundled":
        return load_model(device="cpu").sam
    torch.manual_seed(0)
    model = build_sam(SMALL).eval()
    for p in model.mask_decoder.parameters():  # stock init leaves biases and norms trivial: make every term count
        p.data.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("prompts,tokens", [(1, 2), (4, 3)])
@pytest.mark.parametrize("read", [slice(1, 4), slice(0, 1)], ids=["multimask", "single"])
def test_masks_and_scores_equal_stock_segment_anything(sam, prompts, tokens, read):
    embedding, sparse = _inputs(sam, prompts, tokens)
    with torch.inference_mode():
        want_logits, want_iou = _stock(sam, embedding, sparse, read)
        context = image_context(sam, embedding)
        logits, iou = predict_masks(sam, context, sparse, read)
        again = predict_masks(sam, context, sparse[:1] + 1, read)  # the context serves any prompt
        want_again = _stock(sam, embedding, sparse[:1] + 1, read)
    assert logits.shape == want_logits.shape and iou.shape == want_iou.shape
    scale = float(want_logits.abs().max())
    assert torch.allclose(logits, want_logits, atol=1e-5 * scale, rtol=0)
    assert torch.allclose(iou, want_iou, atol=1e-5)
    assert torch.allclose(again[0], want_again[0], atol=1e-5 * scale, rtol=0)


def test_gradients_equal_stock_segment_anything(sam):
    embedding, sparse = _inputs(sam, 3, 2, seed=1)
    target = torch.randn(3, 3, *[4 * s for s in sam.prompt_encoder.image_embedding_size])

    def grads(run):
        sam.zero_grad()
        emb, sp = embedding.clone().requires_grad_(), sparse.clone().requires_grad_()
        logits, iou = run(emb, sp)
        ((logits - target) ** 2).mean().add(iou.sum()).backward()
        # an output not read gets no gradient here and a zero one in stock SAM
        return [emb.grad, sp.grad] + [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                                      for p in sam.mask_decoder.parameters()]

    want = grads(lambda e, s: _stock(sam, e, s, slice(1, 4)))
    got = grads(lambda e, s: predict_masks(sam, image_context(sam, e), s, slice(1, 4)))
    assert sum(int(w.abs().max() > 0) for w in want) > 100  # the loss reaches (nearly) every parameter
    noise = 1e-6 * max(float(w.abs().max()) for w in want)  # float rounding, seen where a gradient is ~0
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-4 * float(w.abs().max()) + noise, rtol=0)
