import copy

import pytest
import torch

from pointsam_engine.sam import encoder
from pointsam_engine.sam.encoder import use_fused_attention
from pointsam_engine.sam.model import SamArch, build_sam
from tests.conftest import TINY_ARCH


@pytest.fixture()
def stock_sam():
    torch.manual_seed(0)
    sam = build_sam(SamArch(**{**TINY_ARCH, "encoder_depth": 3, "encoder_global_attn_indexes": (1, 2)}))
    for p in sam.image_encoder.parameters():  # rel-pos tables start at zero: make them count
        p.data.normal_(0, 0.2)
    return sam


@pytest.mark.parametrize("chunk_bytes", [1, encoder.CHUNK_BYTES])  # one head at a time, all heads at once
def test_fused_attention_gives_the_same_embedding_as_the_stock_encoder(stock_sam, monkeypatch, chunk_bytes):
    x = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        stock = stock_sam.image_encoder(x)
        monkeypatch.setattr(encoder, "CHUNK_BYTES", chunk_bytes)
        fused = use_fused_attention(stock_sam).image_encoder(x)
    assert type(stock_sam.image_encoder.blocks[1].attn).__name__ == "FusedAttention"
    torch.testing.assert_close(fused, stock, rtol=1e-5, atol=1e-5)  # the same sums, up to float rounding


def test_fused_attention_gives_the_stock_gradients(stock_sam):
    """Training (``pointsam train``) backpropagates through the encoder, relative-position tables included."""
    fused = use_fused_attention(copy.deepcopy(stock_sam))
    x = torch.randn(1, 3, 256, 256)
    grads = []
    for sam in (stock_sam, fused):
        sam.image_encoder(x).square().mean().backward()
        grads.append({n: p.grad for n, p in sam.image_encoder.named_parameters()})
    assert grads[0]["blocks.1.attn.rel_pos_h"].abs().sum() > 0
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_relative_positions_as_key_dimensions_give_the_stock_embedding_on_this_thread_only(stock_sam):
    """What OpenVINO converts: the same arithmetic with no mask."""
    import threading

    x = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        stock = stock_sam.image_encoder(x)
        fused = use_fused_attention(stock_sam).image_encoder
        attention = fused.blocks[1].attn
        calls = []
        masked = attention._with_rel_pos
        attention._with_rel_pos = lambda *args: calls.append(threading.get_ident()) or masked(*args)
        with encoder.rel_pos_as_keys():
            as_keys = fused(x)
            other = threading.Thread(target=fused, args=(x,))
            other.start()
            other.join()
        assert calls == [other.ident]  # the other thread kept the mask
        torch.testing.assert_close(as_keys, stock, rtol=1e-5, atol=1e-5)
        fused(x)
        assert len(calls) == 2  # and so does this one after the block
