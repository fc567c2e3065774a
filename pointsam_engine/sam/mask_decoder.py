"""SAM's mask decoder (``MaskDecoder.predict_masks``), with what does not depend on the prompt computed once per chip.

The arithmetic is segment-anything's; only the order of work changes (tested equal to
``sam.mask_decoder.predict_masks`` up to float rounding, with gradients):

- :func:`image_context`, once per chip: the image tokens (embedding plus the no-mask embedding), the dense
  positional encoding, and the first transformer layer's projections of the image, which see no prompt
  (the keys and values the tokens attend to, the queries of the image's attention to the tokens). Stock SAM
  recomputes them for every prompt of every batch (a quarter of a click's 3.6 GFLOP for vit_b).
- :func:`predict_masks`, per batch of prompts: the rest of the two-way transformer, the image broadcast
  over the batch instead of copied once per prompt; then the upscaling and the hypernetwork product for
  only the mask outputs read. The upscaling runs as two matrix products on pixel rows (stock: two
  transposed convolutions and a hand-written channel LayerNorm over 64 x 128² and 32 x 256² tensors): a
  kernel-2, stride-2 transposed convolution maps each input pixel to its own 2 x 2 block, so it is a product
  with the kernel laid out as a matrix, and the channel LayerNorm is then ``F.layer_norm`` on each row.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple

import torch
import torch.nn.functional as F


class ImageContext(NamedTuple):
    """What the decoder computes from a chip's embedding alone; reused by every prompt on the chip."""

    tokens: torch.Tensor  # (1, HW, C) image embedding + the no-mask dense embedding, one row per pixel
    pe: torch.Tensor  # (1, HW, C) dense positional encoding
    keys: torch.Tensor  # (1, heads, HW, c) first layer, tokens -> image: k_proj(tokens + pe)
    values: torch.Tensor  # (1, heads, HW, c) first layer, tokens -> image: v_proj(tokens)
    queries: torch.Tensor  # (1, heads, HW, c) first layer, image -> tokens: q_proj(tokens + pe)
    size: Tuple[int, int]  # (h, w) of the embedding grid


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C / heads), as segment-anything's ``Attention._separate_heads``."""
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def _attend(attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment-anything's ``Attention.forward`` after its three projections (heads split; batches broadcast)."""
    batch = max(len(q), len(k))
    out = F.scaled_dot_product_attention(q.expand(batch, -1, -1, -1), k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
    b, h, n, c = out.shape
    return attention.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


def image_context(sam, embedding: torch.Tensor) -> ImageContext:
    """The prompt-independent part of decoding on ``embedding`` ``(1, C, h, w)``; None for a SAM 2.1 model, whose
    decoder (:mod:`~pointsam_engine.sam.sam2_backend`) takes the embedding as it is."""
    if getattr(sam, "is_sam2", False):
        return None
    _, c, h, w = embedding.shape
    dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, c, 1, 1)
    # rows laid out contiguously once here: every prompt reads them, and reading a transposed view is 4x slower
    tokens = (embedding + dense).flatten(2).transpose(1, 2).contiguous()
    pe = sam.prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2).contiguous()
    first = sam.mask_decoder.transformer.layers[0]
    to_image, to_tokens = first.cross_attn_token_to_image, first.cross_attn_image_to_token
    keyed = tokens + pe
    return ImageContext(tokens, pe, _heads(to_image.k_proj(keyed), to_image.num_heads),
                        _heads(to_image.v_proj(tokens), to_image.num_heads),
                        _heads(to_tokens.q_proj(keyed), to_tokens.num_heads), (h, w))


def _tokens_to_image(attention, tokens: torch.Tensor, image_keyed: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """segment-anything's ``Attention(q=tokens, k=image_keyed, v=image)`` with the image's key and value projections
    folded into the tokens' side: each head's query is taken back through ``k_proj`` to the embedding width
    (``q W_k``; ``k_proj``'s bias adds a constant to each query's scores, which the softmax ignores), and the
    attention-weighted image rows are projected by ``v_proj`` after the sum (the weights sum to 1, so its bias
    passes through). A few prompt tokens then cost two products with the image rows, not two projections of them."""
    heads, (b, n, width) = attention.num_heads, tokens.shape
    per_head = attention.internal_dim // heads
    q = _heads(attention.q_proj(tokens), heads) * per_head ** -0.5  # (B, heads, n, c), scaled as the stock scores
    folded = (q @ attention.k_proj.weight.reshape(heads, per_head, width)).reshape(b, heads * n, width)
    weights = torch.softmax(folded @ image_keyed.transpose(1, 2), dim=-1)  # (B, heads * n, HW)
    mixed = (weights @ image).reshape(b, heads, n, width)
    out = mixed @ attention.v_proj.weight.reshape(heads, per_head, width).transpose(1, 2)
    out = out + attention.v_proj.bias.reshape(heads, 1, per_head)
    return attention.out_proj(out.transpose(1, 2).reshape(b, n, heads * per_head))


def _image_to_tokens(attention, image: torch.Tensor, image_keyed: torch.Tensor, tokens_keyed: torch.Tensor,
                     tokens: torch.Tensor, image_queries: torch.Tensor = None) -> torch.Tensor:
    """``image`` plus segment-anything's ``Attention(q=image_keyed, k=tokens_keyed, v=tokens)`` (the block's
    residual sum), with the image's query and output projections folded into the tokens' side: each head's keys
    are taken back through ``q_proj`` (its bias becomes one score per key) and each head's values forward
    through its slice of ``out_proj``, so the image rows meet the few tokens in two products instead of being
    projected twice. ``out_proj``'s bias rides on the values (each head's weights sum to 1) and the residual
    is the product's starting value, so the image rows are written once. ``image_queries``: the image's
    projected queries ``(1, heads, HW, c)`` when the caller has them (:class:`ImageContext`)."""
    heads, (b, n, width) = attention.num_heads, tokens.shape
    per_head = attention.internal_dim // heads
    k = _heads(attention.k_proj(tokens_keyed), heads) * per_head ** -0.5  # (B, heads, n, c)
    v = _heads(attention.v_proj(tokens), heads)
    if image_queries is None:
        folded = (k @ attention.q_proj.weight.reshape(heads, per_head, width)).reshape(b, heads * n, width)
        bias = (k @ attention.q_proj.bias.reshape(heads, per_head, 1)).reshape(b, heads * n, 1)
        scores = torch.baddbmm(bias, folded, image_keyed.transpose(1, 2)) if len(image_keyed) == b else \
            folded @ image_keyed.transpose(1, 2) + bias
    else:
        scores = (k @ image_queries.transpose(-1, -2)).flatten(1, 2)
    # scores (B, heads * n, HW): the softmax over each head's n keys runs along a strided axis, which torch
    # vectorizes over the contiguous HW (softmax over a last axis of a few keys is 15x slower)
    weights = torch.softmax(scores.unflatten(1, (heads, n)), dim=2).flatten(1, 2)
    out_weight = attention.out_proj.weight.reshape(width, heads, per_head).permute(1, 2, 0)  # (heads, c, C)
    values = (v @ out_weight).reshape(b, heads * n, width) + attention.out_proj.bias / heads
    return torch.baddbmm(image, weights.transpose(1, 2), values)


def _layer(layer, queries, keys, query_pe, key_pe, context=None):
    """segment-anything's ``TwoWayAttentionBlock.forward``; the first layer takes the image's projections
    from ``context``."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    queries = layer.norm1(queries)

    to_image, to_tokens = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    q = queries + query_pe
    if context is None:
        keyed = keys + key_pe
        attn_out = _tokens_to_image(to_image, q, keyed, keys)
    else:
        keyed = None
        attn_out = _attend(to_image, _heads(to_image.q_proj(q), to_image.num_heads), context.keys, context.values)
    queries = layer.norm2(queries + attn_out)
    queries = layer.norm3(queries + layer.mlp(queries))

    q = queries + query_pe
    keys = layer.norm4(_image_to_tokens(to_tokens, keys, keyed, q, queries, None if context is None else context.queries))
    return queries, keys


def _transformer(transformer, context: ImageContext, prompt_tokens: torch.Tensor):
    """segment-anything's ``TwoWayTransformer.forward`` on image rows (no reshaping of the image)."""
    queries, keys = prompt_tokens, context.tokens
    for i, layer in enumerate(transformer.layers):
        queries, keys = _layer(layer, queries, keys, prompt_tokens, context.pe, context if i == 0 else None)
    final = transformer.final_attn_token_to_image
    attn_out = _tokens_to_image(final, queries + prompt_tokens, keys + context.pe, keys)
    return transformer.norm_final_attn(queries + attn_out), keys.expand(len(queries), -1, -1)


def _upscale_rows(conv: torch.nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """A kernel-2, stride-2 transposed convolution on pixel rows: (..., Cin) -> (..., 4, Cout), the four
    sub-pixels in row-major order (top-left, top-right, bottom-left, bottom-right)."""
    cin, cout = conv.weight.shape[:2]
    matrix = conv.weight.permute(2, 3, 1, 0).reshape(4 * cout, cin)
    return F.linear(x, matrix, conv.bias.repeat(4)).unflatten(-1, (4, cout))


def _upscaled_masks(decoder, image: torch.Tensor, hyper: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``(B, K, 4h, 4w)`` mask logits from image rows ``(B, hw, C)`` and hypernetwork outputs ``(B, K, C/8)``:
    stock ``output_upscaling`` followed by the product with ``hyper``."""
    up1, norm, act1, up2, act2 = decoder.output_upscaling
    x = act1(F.layer_norm(_upscale_rows(up1, image), norm.weight.shape, norm.weight, norm.bias, norm.eps))
    x = act2(_upscale_rows(up2, x))  # (B, hw, 4, 4, C/8)
    (h, w), (b, k, c) = size, hyper.shape
    logits = x.reshape(b, -1, c) @ hyper.transpose(1, 2)  # (B, hw * 16, K)
    # pixel (i, j), first sub-pixel (a1, b1), second (a2, b2) -> row 4i + 2a1 + a2, column 4j + 2b1 + b2
    logits = logits.reshape(b, h, w, 2, 2, 2, 2, k).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return logits.reshape(b, k, 4 * h, 4 * w)


def predict_masks(sam, context: ImageContext, sparse: torch.Tensor, read: slice) -> Tuple[torch.Tensor, torch.Tensor]:
    """Low-resolution logits ``(n, k, 4h, 4w)`` and predicted IoUs ``(n, k)`` of the mask outputs ``read``, for
    ``n`` prompts' sparse embeddings ``(n, t, C)``: segment-anything's ``predict_masks`` sliced to ``read``."""
    decoder = sam.mask_decoder
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(len(sparse), -1, -1), sparse), dim=1)
    hs, image = _transformer(decoder.transformer, context, tokens)
    outputs = range(decoder.num_mask_tokens)[read]
    hyper = torch.stack([decoder.output_hypernetworks_mlps[i](hs[:, 1 + i]) for i in outputs], dim=1)
    iou = decoder.iou_prediction_head(hs[:, 0])[:, read]
    return _upscaled_masks(decoder, image, hyper, context.size), iou
