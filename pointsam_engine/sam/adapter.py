"""Region adapters: LoRA weights trained for one base model (``pointsam train``), applied at inference.

An adapter file is a ``torch.save`` dict in the engine's own format, small enough to share:

- ``format`` ``"pointsam-adapter"``, ``version``, ``name``;
- ``base``: the base model's name, sha256 and type. An adapter is refused on any other base;
- ``lora``: rank, alpha and the adapted encoder blocks; ``state_dict``: the LoRA tensors only;
- ``decoder_state_dict``: the mask decoder's weights when it was fine-tuned too (else absent);
- ``normalization`` (the stretch used in training), ``config`` and ``history`` (validation per step).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import torch

from ..errors import ModelError, OutputError
from ..output import atomic_path
from .lora import add_lora, load_lora_state_dict, lora_config, lora_state_dict, merge_lora
from .model import LoadedModel, file_sha256, save_pointsam_checkpoint

ADAPTER_FORMAT = "pointsam-adapter"


def save_adapter(sam: torch.nn.Module, path, *, base: LoadedModel, config: dict, history: list,
                 normalization: Optional[dict] = None, decoder: bool = False) -> Path:
    """Write the adapter of ``sam`` (a LoRA-adapted copy of ``base``) atomically."""
    path = Path(path)
    payload = {
        "format": ADAPTER_FORMAT, "version": 1, "name": path.name.split(".")[0],
        "base": {"name": base.name, "sha256": base.sha256, "model_type": base.model_type},
        "lora": lora_config(sam), "state_dict": lora_state_dict(sam),
        "normalization": normalization, "config": config, "history": history,
    }
    if decoder:
        payload["decoder_state_dict"] = {k: v.detach().cpu() for k, v in sam.mask_decoder.state_dict().items()}
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except OSError as exc:
        raise OutputError(f"cannot write the adapter {path} ({exc.strerror}); choose a writable -o path") from None
    return path


def read_adapter(path) -> dict:
    """The adapter file's contents, checked to be an adapter."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"adapter {path} does not exist; pass the .adapter.pt file written by pointsam train")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise ModelError(f"{path} is not a PointSAM adapter (torch cannot load it); pass a file written by pointsam train") from None
    if not isinstance(payload, dict) or payload.get("format") != ADAPTER_FORMAT:
        raise ModelError(f"{path} is not a PointSAM adapter; pass --model for whole models and --adapter for files "
                         "written by pointsam train")
    base = payload.get("base")
    if not isinstance(base, dict) or not {"name", "sha256"} <= set(base) or not isinstance(payload.get("lora"), dict) \
            or not isinstance(payload.get("state_dict"), dict):
        raise ModelError(f"adapter {path} does not record its base model (damaged or hand-made); pass an intact "
                         "file written by pointsam train")
    return payload


def apply_adapter(model: LoadedModel, path) -> LoadedModel:
    """``model`` with the adapter's LoRA (and decoder) weights in place; refuses an adapter of another base."""
    payload = read_adapter(path)
    base = payload["base"]
    if base["sha256"] != model.sha256:
        raise ModelError(f"adapter {path} was trained on {base['name']}@{base['sha256'][:12]}, not on "
                         f"{model.label}; pass that base model with --model")
    add_lora(model.sam, **payload["lora"])
    load_lora_state_dict(model.sam, payload["state_dict"])
    if "decoder_state_dict" in payload:
        model.sam.mask_decoder.load_state_dict(payload["decoder_state_dict"])
    model.sam.eval()
    return dataclasses.replace(model, adapter=f"{payload['name']}@{file_sha256(path)[:12]}",
                               provenance={**model.provenance, "adapter": {k: payload[k] for k in ("name", "config")}})


def export_merged(model: LoadedModel, path) -> Path:
    """Fold an applied adapter into the base weights and write a self-describing PointSAM model file."""
    if model.adapter is None:
        raise ModelError("no adapter to merge; pass --adapter")
    merge_lora(model.sam)
    path = Path(path)
    provenance = {**model.provenance, "merged_from": model.label}
    try:
        with atomic_path(path) as tmp:
            save_pointsam_checkpoint(model.sam.cpu(), model.arch, tmp, name=path.name.split(".")[0],
                                     provenance=provenance)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror}); choose a writable -o path") from None
    return path
