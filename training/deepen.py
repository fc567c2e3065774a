"""A deeper encoder that starts as the model it grew from ("block expansion", as LLaMA Pro grows an LLM).

Copies of the encoder's blocks are inserted after them (each block gets the same number where the new depth is a
multiple of the old, else they are spread evenly), their output projections (attention's ``proj`` and the MLP's
``lin2``) starting at zero: a ViT block adds its two branches to the residual stream, so such a copy passes its
input through unchanged and the deepened model computes exactly what the shallow one did. Training then starts
from the shallow model's quality with the capacity of the deeper one. Copies keep their source's attention kind
(windowed or global), so the global blocks stay spread through the depth.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import torch

from pointsam_engine.sam.model import SamArch, build_sam


def copies_per_block(depth_from: int, depth_to: int) -> Tuple[int, ...]:
    """How many blocks each of ``depth_from`` blocks becomes (itself and its copies), spread evenly."""
    return tuple((i + 1) * depth_to // depth_from - i * depth_to // depth_from for i in range(depth_from))


def deepened_arch(arch: SamArch, depth: int) -> SamArch:
    """``arch`` with ``depth`` encoder blocks: the blocks of ``arch``, each followed by its copies, if any."""
    if depth <= arch.encoder_depth:
        raise ValueError(f"the model's encoder has {arch.encoder_depth} blocks and can only grow")
    starts = [0]
    for n in copies_per_block(arch.encoder_depth, depth):
        starts.append(starts[-1] + n)
    globals_ = tuple(j for i in arch.encoder_global_attn_indexes for j in range(starts[i], starts[i + 1]))
    return dataclasses.replace(arch, encoder_depth=depth, encoder_global_attn_indexes=globals_)


def deepen(sam: torch.nn.Module, arch: SamArch, depth: int) -> Tuple[torch.nn.Module, SamArch]:
    """A model with ``depth`` encoder blocks that computes what ``sam`` does; everything else is ``sam``'s."""
    deep_arch = deepened_arch(arch, depth)
    deep = build_sam(deep_arch, sam.pixel_mean.flatten().tolist(), sam.pixel_std.flatten().tolist())
    outside = {k: v for k, v in sam.state_dict().items() if not k.startswith("image_encoder.blocks.")}
    missing, unexpected = deep.load_state_dict(outside, strict=False)
    if unexpected or not all(k.startswith("image_encoder.blocks.") for k in missing):
        raise RuntimeError(f"the deepened model does not fit the weights outside the blocks: {unexpected or missing}")
    target = iter(deep.image_encoder.blocks)
    for block, n in zip(sam.image_encoder.blocks, copies_per_block(arch.encoder_depth, depth)):
        for j in range(n):
            copy = next(target)
            copy.load_state_dict(block.state_dict())
            if j:
                for layer in (copy.attn.proj, copy.mlp.lin2):
                    torch.nn.init.zeros_(layer.weight)
                    torch.nn.init.zeros_(layer.bias)
    return deep, deep_arch
