"""Region adapters: LoRA weights trained for one base model (``pointsam train``), applied at inference.

An adapter file is a ``torch.save`` dict in the engine's own format, small enough to share:

- ``format`` ``"pointsam-adapter"``, ``version``, ``name``;
- ``base``: the base model's name, sha256 and type. An adapter is refused on any other base;
- ``lora``: rank, alpha and the adapted encoder blocks; ``state_dict``: the LoRA tensors only;
- ``decoder_state_dict``: the mask decoder's weights when it was fine-tuned too (else absent);
- ``normalization`` (the stretch used in training, per raster), ``config`` and ``history`` (validation per step).

Adapter files are named ``NAME.adapter.pt`` (:data:`ADAPTER_SUFFIX`): ``pointsam train`` writes no other name
and ``GET /v1/models`` lists these. An adapter is applied only under the normalization it was trained with
(``--stretch`` and ``--sar-db``; :func:`check_normalization`): the same raster stretched otherwise is
different imagery to the adapted encoder. The bands are not compared: their numbers name a raster's layout
(R, G, B are bands 1-3 in one file and 3, 2, 1 in another), not a normalization.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Tuple

import torch

from ..config import Stretch, stretch_text
from ..errors import ModelError, OptionError, OutputError
from ..output import atomic_path
from .lora import add_lora, load_lora_state_dict, lora_config, lora_state_dict, merge_lora
from .model import LoadedModel, file_sha256, load_model, save_pointsam_checkpoint
from .sam2_backend import is_sam2, save_sam2_checkpoint

ADAPTER_FORMAT = "pointsam-adapter"
ADAPTER_SUFFIX = ".adapter.pt"


def is_adapter_name(path) -> bool:
    """Whether ``path`` is named as an adapter file (``NAME.adapter.pt``)."""
    return Path(path).name.lower().endswith(ADAPTER_SUFFIX)


def adapter_stem(path) -> str:
    """``NAME`` of ``NAME.adapter.pt``: the adapter's name, and the stem of the files training writes beside it."""
    name = Path(path).name
    return name[: -len(ADAPTER_SUFFIX)] if is_adapter_name(name) else Path(name).stem


def save_adapter(sam: torch.nn.Module, path, *, base: LoadedModel, config: dict, history: list,
                 normalization: Optional[dict] = None, decoder: bool = False) -> Path:
    """Write the adapter of ``sam`` (a LoRA-adapted copy of ``base``) atomically."""
    path = Path(path)
    payload = {
        "format": ADAPTER_FORMAT, "version": 1, "name": adapter_stem(path),
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


def read_adapter(path, *, mmap: bool = False) -> dict:
    """The adapter file's contents, checked to be an adapter (:class:`ModelError` otherwise).

    ``mmap``: the tensors are memory-mapped, not read (reading a folder of adapters for their headers)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"adapter {path} does not exist; pass the {ADAPTER_SUFFIX} file written by pointsam train")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception:
        raise ModelError(f"{path} is not a PointSAM adapter (torch cannot load it); "
                         "pass a file written by pointsam train") from None
    if not isinstance(payload, dict) or payload.get("format") != ADAPTER_FORMAT:
        raise ModelError(f"{path} is not a PointSAM adapter; pass --model for whole models and --adapter for files "
                         "written by pointsam train")
    base = payload.get("base")
    if not isinstance(base, dict) or not {"name", "sha256"} <= set(base) or not isinstance(payload.get("lora"), dict) \
            or not isinstance(payload.get("state_dict"), dict):
        raise ModelError(f"adapter {path} does not record its base model (damaged or hand-made); pass an intact "
                         "file written by pointsam train")
    return payload


def adapter_header(path) -> Optional[dict]:
    """``{"name", "path", "base": {"name", "sha256", "model_type"}}`` of an adapter file; None when it is not one.

    Listing a folder of adapters costs their headers only (the tensors are memory-mapped)."""
    try:
        payload = read_adapter(path, mmap=True)
    except ModelError:
        return None
    base = payload["base"]
    return {"name": str(payload.get("name", Path(path).name)), "path": str(path),
            "base": {"name": str(base.get("name")), "sha256": str(base.get("sha256")),
                     "model_type": base.get("model_type")}}


def _settings(normalization: dict) -> Tuple[str, bool]:
    """``(--stretch as typed, --sar-db)`` of a recorded :class:`~pointsam_engine.raster.Normalization`."""
    percentiles = normalization.get("percentiles")
    stretch = stretch_text(tuple(percentiles)) if percentiles else str(normalization.get("method"))
    return stretch, bool(normalization.get("sar_db"))


def _flags(stretch: str, sar_db: bool) -> str:
    return f"--stretch {stretch}" + (" --sar-db" if sar_db else "")


def check_normalization(payload: dict, path, stretch: Stretch, sar_db: bool) -> None:
    """Refuse (:class:`OptionError`) an adapter trained under another ``--stretch`` / ``--sar-db`` than the run's.

    Adapters that record no normalization (older files) pass."""
    recorded = payload.get("normalization")
    if not isinstance(recorded, dict) or not recorded:
        return
    trained = {_settings(n) for n in recorded.values() if isinstance(n, dict)}
    run = (stretch_text(stretch), bool(sar_db))
    if not trained or run in trained:
        return
    wanted = " or ".join(sorted(_flags(*t) for t in trained))
    raise OptionError(f"adapter {path} was trained with {wanted}, but this run uses {_flags(*run)}; "
                      f"pass {wanted} to match it")


def apply_adapter(model: LoadedModel, path, *, stretch: Optional[Stretch] = None, sar_db: bool = False) -> LoadedModel:
    """``model`` with the adapter's LoRA (and decoder) weights in place; refuses an adapter of another base, and,
    when the run's ``stretch`` is given, one trained under another normalization (:func:`check_normalization`)."""
    payload = read_adapter(path)
    base = payload["base"]
    if base["sha256"] != model.sha256:
        raise ModelError(f"adapter {path} was trained on {base['name']}@{base['sha256'][:12]}, not on "
                         f"{model.label}; pass that base model with --model")
    if stretch is not None:
        check_normalization(payload, path, stretch, sar_db)
    add_lora(model.sam, **payload["lora"])
    load_lora_state_dict(model.sam, payload["state_dict"])
    if "decoder_state_dict" in payload:
        model.sam.mask_decoder.load_state_dict(payload["decoder_state_dict"])
    model.sam.eval()
    return dataclasses.replace(model, adapter=f"{payload['name']}@{file_sha256(path)[:12]}",
                               provenance={**model.provenance, "adapter": {k: payload[k] for k in ("name", "config")}})


def load_adapted_model(model: Optional[str] = None, adapter: Optional[str] = None, *, model_type: Optional[str] = None,
                       device: str = "auto", precision: str = "fp32", stretch: Optional[Stretch] = None,
                       sar_db: bool = False) -> LoadedModel:
    """The one way a model and its adapter are loaded (the CLI, :func:`~pointsam_engine.segment`, the server):
    :func:`~pointsam_engine.sam.model.load_model`, then :func:`apply_adapter` when ``adapter`` is given.

    ``stretch`` / ``sar_db``: the run's normalization, checked against the adapter's (None: not checked, for a
    server whose requests each bring their own)."""
    loaded = load_model(model, model_type=model_type, device=device, precision=precision)
    return apply_adapter(loaded, adapter, stretch=stretch, sar_db=sar_db) if adapter else loaded


def export_merged(model: LoadedModel, path) -> Path:
    """Fold an applied adapter into the base weights and write a self-describing PointSAM model file (SAM 2.1: the
    engine's SAM 2.1 format, :func:`~pointsam_engine.sam.sam2_backend.save_sam2_checkpoint`)."""
    if model.adapter is None:
        raise ModelError("no adapter to merge; pass --adapter")
    merge_lora(model.sam)
    path = Path(path)
    provenance = {**model.provenance, "merged_from": model.label}
    save = save_sam2_checkpoint if is_sam2(model.sam) else save_pointsam_checkpoint
    try:
        with atomic_path(path) as tmp:
            save(model.sam.cpu(), model.arch, tmp, name=path.name.split(".")[0], provenance=provenance)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror}); choose a writable -o path") from None
    return path
