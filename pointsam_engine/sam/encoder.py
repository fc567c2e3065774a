"""SAM's image-encoder attention through ``scaled_dot_product_attention``, with the same arithmetic as the stock one.

The stock attention of a vit_b global block on a 1024² chip materialises a 12 heads x 4096 x 4096
float32 attention map (about 800 MB), adds the decomposed relative-position terms to it and takes its
softmax, each a full copy. Here the relative-position terms become the additive ``attn_mask`` of torch's
fused attention (exact: the same sum, up to float rounding), built a few heads at a time so the
largest buffer stays near :data:`CHUNK_BYTES`; the fused kernel never holds the whole map. It is about
1.6x faster than the stock arithmetic in float32 and runs under bf16 autocast (see
:mod:`pointsam_engine.sam.precision`); ``benchmarks/bench_encoder.py`` measures it against stock
segment-anything. Windowed blocks (14 x 14 tokens) are small and run as one chunk.
"""

from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos

CHUNK_BYTES = 64 * 2**20  # bytes of relative-position mask built at once


class FusedAttention(Attention):
    """:class:`segment_anything` ``Attention`` computed by torch's fused attention (same parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        tokens = H * W
        qkv = self.qkv(x).reshape(B, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each B x heads x tokens x head_dim
        if self.use_rel_pos:
            out = (self._rel_pos_as_keys if getattr(_AS_KEYS, "on", False) else self._with_rel_pos)(q, k, v, H, W)
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        x = out.view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(x)

    def _with_rel_pos(self, q, k, v, H: int, W: int) -> torch.Tensor:
        """Attention whose mask is segment-anything's ``add_decomposed_rel_pos`` terms, a few heads at a time."""
        B, heads, tokens, dim = q.shape
        rel_h = get_rel_pos(H, H, self.rel_pos_h).to(q.dtype)
        rel_w = get_rel_pos(W, W, self.rel_pos_w).to(q.dtype)
        step = max(1, CHUNK_BYTES // (B * tokens * tokens * q.element_size()))
        out = []
        for start in range(0, heads, step):
            qs = q[:, start:start + step]
            grid = qs.reshape(B, -1, H, W, dim)
            along_h = torch.einsum("bnhwc,hkc->bnhwk", grid, rel_h)
            along_w = torch.einsum("bnhwc,wkc->bnhwk", grid, rel_w)
            mask = (along_h[..., :, None] + along_w[..., None, :]).reshape(B, -1, tokens, tokens)
            out.append(F.scaled_dot_product_attention(qs, k[:, start:start + step], v[:, start:start + step],
                                                      attn_mask=mask, scale=self.scale))
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)


    def _rel_pos_as_keys(self, q, k, v, H: int, W: int) -> torch.Tensor:
        """The same attention with no mask at all: the relative-position terms become extra key dimensions. Each
        query carries its terms along rows and columns, each key a one-hot of its row and column, so the
        product adds exactly the mask's ``rel_h[q, key row] + rel_w[q, key column]`` to ``scale * q . k``.
        Three times the product's width, but nothing of ``tokens x tokens`` size exists outside the kernel:
        what OpenVINO is given (:func:`rel_pos_as_keys`), whose runtime otherwise keeps every head's mask
        (about 800 MB for vit_b) alive at once."""
        B, heads, tokens, dim = q.shape
        grid = q.reshape(B, heads, H, W, dim)
        along_h = torch.einsum("bnhwc,hkc->bnhwk", grid, get_rel_pos(H, H, self.rel_pos_h).to(q.dtype))
        along_w = torch.einsum("bnhwc,wkc->bnhwk", grid, get_rel_pos(W, W, self.rel_pos_w).to(q.dtype))
        queries = torch.cat([q * self.scale, along_h.reshape(B, heads, tokens, H), along_w.reshape(B, heads, tokens, W)], -1)
        rows, cols = torch.arange(H, device=q.device), torch.arange(W, device=q.device)
        where = torch.cat([F.one_hot(rows.repeat_interleave(W), H), F.one_hot(cols.repeat(H), W)], 1).to(q.dtype)
        keys = torch.cat([k, where.expand(B, heads, -1, -1)], -1)
        return F.scaled_dot_product_attention(queries, keys, v, scale=1.0)


_AS_KEYS = threading.local()


@contextlib.contextmanager
def rel_pos_as_keys():
    """Within this block (this thread), global attention takes its relative positions as key dimensions
    (:meth:`FusedAttention._rel_pos_as_keys`) instead of a mask: for converting the encoder to OpenVINO."""
    _AS_KEYS.on = True
    try:
        yield
    finally:
        _AS_KEYS.on = False


def use_fused_attention(module: torch.nn.Module) -> torch.nn.Module:
    """Switch every stock ``Attention`` inside ``module`` to :class:`FusedAttention`, in place."""
    for sub in module.modules():
        if type(sub) is Attention:
            sub.__class__ = FusedAttention
    return module
