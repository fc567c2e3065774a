import torch

from pointsam_engine import encoder
from pointsam_engine.encoder import use_lean_attention
from pointsam_engine.model import SamArch, build_sam
from tests.conftest import TINY_ARCH


def test_lean_attention_gives_the_same_embedding_as_the_stock_encoder(monkeypatch):
    torch.manual_seed(0)
    sam = build_sam(SamArch(**{**TINY_ARCH, "encoder_depth": 3, "encoder_global_attn_indexes": (1, 2)}))
    for p in sam.image_encoder.parameters():  # rel-pos tables start at zero: make them count
        p.data.normal_(0, 0.2)
    x = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        stock = sam.image_encoder(x)
        monkeypatch.setattr(encoder, "CHUNK_BYTES", 1)  # one head at a time
        lean = use_lean_attention(sam).image_encoder(x)
    assert type(sam.image_encoder.blocks[1].attn).__name__ == "LeanAttention"
    torch.testing.assert_close(lean, stock, rtol=1e-5, atol=1e-5)  # the same sums, up to float rounding
