"""Memory-lean attention for SAM's image encoder, with the same arithmetic as the stock one.

In a stock vit_b global-attention block the attention map of a 1024² chip is 12 heads x 4096 x
4096 float32, about 800 MB, and the relative-position sum and the softmax each make another. Here
the same matrices are computed a few heads at a time, so the peak stays near one head's map
(64 MB). It runs about as fast as the stock encoder, and the embedding equals the stock one up to
float rounding (tested; ``benchmarks/bench_encoder.py`` compares both on a full vit_b). Windowed blocks (14 x 14 tokens) are small and run as one chunk.
"""

from __future__ import annotations

import torch
from segment_anything.modeling.image_encoder import Attention, add_decomposed_rel_pos

CHUNK_BYTES = 64 * 2**20  # attention-map bytes computed at once


class LeanAttention(Attention):
    """:class:`segment_anything` ``Attention`` computed in chunks of heads (same parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        tokens = H * W
        qkv = self.qkv(x).reshape(B, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, tokens, -1).unbind(0)
        step = max(1, CHUNK_BYTES // (tokens * tokens * q.element_size()))
        out = []
        for start in range(0, q.shape[0], step):
            qs, ks, vs = q[start:start + step], k[start:start + step], v[start:start + step]
            attn = (qs * self.scale) @ ks.transpose(-2, -1)
            if self.use_rel_pos:
                attn = add_decomposed_rel_pos(attn, qs, self.rel_pos_h, self.rel_pos_w, (H, W), (H, W))
            out.append(attn.softmax(dim=-1) @ vs)
        x = torch.cat(out).view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(x)


def use_lean_attention(module: torch.nn.Module) -> torch.nn.Module:
    """Switch every stock ``Attention`` inside ``module`` to :class:`LeanAttention`, in place."""
    for sub in module.modules():
        if type(sub) is Attention:
            sub.__class__ = LeanAttention
    return module
