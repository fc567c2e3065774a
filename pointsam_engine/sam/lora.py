"""LoRA adapters on the q and v projections of SAM's image-encoder attention; everything else frozen.

segment-anything's ``Attention`` (and the engine's ``FusedAttention``) projects tokens with one fused
``qkv = Linear(dim, 3 * dim)``; SAM 2.1's hiera ``MultiScaleAttention`` likewise with ``qkv = Linear(dim,
3 * dim_out)`` (``dim_out`` doubles at a stage's first block). :class:`LoRAQKV` replaces it and adds low-rank
updates to the q and v slices only, as PointSAM (and WeSAM) do:

    q += scale * B_q A_q x,    v += scale * B_v A_v x,    k unchanged,    scale = alpha / rank.

A is Kaiming-uniform initialised and B is zero, so an adapted model starts out equal to the base
model. PointSAM uses rank 4 and no scaling, which is the default here (alpha = rank).

State-dict keys. :class:`LoRAQKV` is an ``nn.Linear`` that shares the original ``weight`` and
``bias``, so the base keys stay as they were and a stock SAM state dict loads into an adapted model
with ``strict=False`` (the only missing keys are the LoRA ones). Per adapted block it adds

    image_encoder.blocks.{i}.attn.qkv.lora_q_a.weight   (rank, dim)
    image_encoder.blocks.{i}.attn.qkv.lora_q_b.weight   (dim, rank)
    image_encoder.blocks.{i}.attn.qkv.lora_v_a.weight   (rank, dim)
    image_encoder.blocks.{i}.attn.qkv.lora_v_b.weight   (dim, rank)

(SAM 2.1: ``image_encoder.trunk.blocks.{i}...``, the ``_b`` weights ``(dim_out, rank)``), which are exactly
what :func:`lora_state_dict` returns. :func:`merge_lora` folds the updates into
``qkv.weight`` and puts plain ``nn.Linear`` layers back, so the merged model's state dict has the
stock key layout. Rank and alpha are not tensors: save :func:`lora_config` next to the adapter.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from pointsam_engine.errors import ModelError, OptionError

__all__ = ["LoRAQKV", "add_lora", "base_model", "load_lora_state_dict", "lora_config", "lora_state_dict", "merge_lora"]


class LoRAQKV(nn.Linear):
    """A fused qkv ``Linear`` plus low-rank updates on its q and v slices.

    Args:
        base: the ``Linear(dim, 3 * dim_out)`` to adapt; its weight and bias are shared, not copied.
        rank: rank of each update.
        alpha: the updates are scaled by ``alpha / rank``.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        if base.out_features % 3:
            raise OptionError(f"LoRA expects a fused qkv Linear(dim, 3*dim_out), got Linear({base.in_features}, "
                              f"{base.out_features})")
        weight = base.weight
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        dim, out, kwargs = base.in_features, base.out_features // 3, dict(bias=False, device=weight.device,
                                                                            dtype=weight.dtype)
        self.lora_q_a, self.lora_q_b = nn.Linear(dim, rank, **kwargs), nn.Linear(rank, out, **kwargs)
        self.lora_v_a, self.lora_v_b = nn.Linear(dim, rank, **kwargs), nn.Linear(rank, out, **kwargs)
        for a, b in ((self.lora_q_a, self.lora_q_b), (self.lora_v_a, self.lora_v_b)):
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))  # as in the LoRA reference code and peft
            nn.init.zeros_(b.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.linear(x, self.weight, self.bias).split(self.out_features // 3, dim=-1)
        q = q + self.lora_q_b(self.lora_q_a(x)) * self.scale
        v = v + self.lora_v_b(self.lora_v_a(x)) * self.scale
        return torch.cat([q, k, v], dim=-1)

    def delta_weight(self) -> torch.Tensor:
        """The (3*dim_out, dim) update that :func:`merge_lora` adds to ``weight``."""
        dq = self.lora_q_b.weight @ self.lora_q_a.weight
        dv = self.lora_v_b.weight @ self.lora_v_a.weight
        return torch.cat([dq, torch.zeros_like(dq), dv]) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"


def _adapted(sam: nn.Module) -> Dict[str, LoRAQKV]:
    return {name: m for name, m in sam.named_modules() if isinstance(m, LoRAQKV)}


def _encoder_blocks(sam: nn.Module) -> Tuple[str, nn.ModuleList]:
    """The image encoder's transformer blocks and their module path: SAM's ``image_encoder.blocks``, SAM 2.1's
    hiera ``image_encoder.trunk.blocks``."""
    trunk = getattr(sam.image_encoder, "trunk", None)
    if trunk is not None:
        return "image_encoder.trunk.blocks", trunk.blocks
    return "image_encoder.blocks", sam.image_encoder.blocks


def add_lora(sam: nn.Module, rank: int = 4, alpha: Optional[float] = None,
             blocks: Optional[Iterable[int]] = None) -> List[str]:
    """Adapt the qkv projections of chosen image-encoder blocks and freeze every other parameter.

    Args:
        sam: a segment-anything ``Sam`` (anything with ``image_encoder.blocks``) or a SAM 2.1 model (hiera
            blocks), changed in place.
        rank: LoRA rank (PointSAM: 4).
        alpha: scale numerator; defaults to ``rank`` (scale 1, as PointSAM).
        blocks: encoder block indices to adapt; default all but the first (PointSAM on WHU and
            HRSID; NWPU used blocks 6-11).

    Returns:
        The module names of the adapted qkv layers, e.g. ``image_encoder.blocks.1.attn.qkv``.
    """
    prefix, encoder_blocks = _encoder_blocks(sam)
    blocks = sorted(set(range(1, len(encoder_blocks)) if blocks is None else blocks))
    if rank < 1:
        raise OptionError(f"LoRA rank must be at least 1, got {rank}")
    if not blocks or any(not 0 <= i < len(encoder_blocks) for i in blocks):
        raise OptionError(f"LoRA blocks {blocks} are empty or outside the encoder's blocks 0-{len(encoder_blocks) - 1}")
    if _adapted(sam):
        raise OptionError("this model already has LoRA adapters; build a fresh model or use merge_lora first")
    for p in sam.parameters():
        p.requires_grad_(False)
    names = []
    for i in blocks:
        attn = encoder_blocks[i].attn
        attn.qkv = LoRAQKV(attn.qkv, rank, rank if alpha is None else alpha)
        names.append(f"{prefix}.{i}.attn.qkv")
    return names


def lora_config(sam: nn.Module) -> dict:
    """``{"rank", "alpha", "blocks"}`` of the model's adapters: what :func:`add_lora` needs to rebuild them."""
    adapted = _adapted(sam)
    if not adapted:
        raise ModelError("this model has no LoRA adapters; call add_lora first")
    first = next(iter(adapted.values()))
    blocks = [int(re.search(r"blocks\.(\d+)\.attn", name).group(1)) for name in adapted]
    return {"rank": first.rank, "alpha": first.alpha, "blocks": blocks}


@contextmanager
def base_model(sam: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``sam`` computes the base model: every adapter's update is switched off.

    No weights are copied, so the frozen base costs no memory beside the adapted model (self-training's
    anchor uses it)."""
    layers = list(_adapted(sam).values())
    scales = [layer.scale for layer in layers]
    for layer in layers:
        layer.scale = 0.0
    try:
        yield sam
    finally:
        for layer, scale in zip(layers, scales):
            layer.scale = scale


def lora_state_dict(sam: nn.Module) -> Dict[str, torch.Tensor]:
    """The LoRA tensors only (detached copies), under the model's own parameter names."""
    return {name: p.detach().clone() for name, p in sam.named_parameters() if ".lora_" in name}


def load_lora_state_dict(sam: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Copy adapter tensors from :func:`lora_state_dict` into a model adapted with the same settings.

    Raises:
        ModelError: the keys or shapes differ (another rank, other blocks, another encoder width).
    """
    own = dict((name, p) for name, p in sam.named_parameters() if ".lora_" in name)
    if not own:
        raise ModelError("this model has no LoRA adapters; call add_lora with the adapter's rank and blocks first")
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelError(f"the LoRA adapter does not fit this model: {len(missing)} missing keys "
                         f"{missing[:1]}, {len(unexpected)} unexpected keys {unexpected[:1]}; "
                         "call add_lora with the blocks the adapter was trained with")
    for name, p in own.items():
        if tuple(state[name].shape) != tuple(p.shape):
            raise ModelError(f"the LoRA adapter does not fit this model: {name} has shape {tuple(state[name].shape)}, "
                             f"the model expects {tuple(p.shape)}; call add_lora with the adapter's rank")
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(state[name])


def merge_lora(sam: nn.Module) -> nn.Module:
    """Fold every adapter into its qkv weight and restore plain ``nn.Linear`` layers, in place.

    The merged model computes the same function (up to float rounding) and its state dict has
    exactly the keys of a stock SAM. Returns ``sam``.
    """
    for name, module in _adapted(sam).items():
        parent_name, _, child = name.rpartition(".")
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                          device="meta")
        with torch.no_grad():
            plain.weight = nn.Parameter(module.weight + module.delta_weight(),
                                        requires_grad=module.weight.requires_grad)
        plain.bias = module.bias
        setattr(sam.get_submodule(parent_name), child, plain)
    return sam
