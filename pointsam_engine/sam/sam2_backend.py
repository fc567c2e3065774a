"""SAM 2.1 behind the engine's façade: the official hiera checkpoints, built with the ``sam2`` package's own classes.

``sam2`` is an optional extra (``pip install -e ".[sam2]"``); this module imports it only when a SAM 2.1 model is
built, so the engine, and every SAM path, runs without it. What the rest of the engine sees:

- a model (:func:`build_sam2_model`) that is ``sam2``'s ``SAM2Base`` with three additions: ``mask_decoder`` and
  ``prompt_encoder`` name its ``sam_mask_decoder`` / ``sam_prompt_encoder`` (LoRA, adapters and training reach
  the decoder by SAM's names), ``pixel_mean`` / ``pixel_std`` (not saved) and :meth:`preprocess`, as SAM's;
- an embedding (:class:`Sam2Embedding`): the image embedding ``(1, 256, 64, 64)`` and the two high-resolution
  feature maps SAM 2.1's decoder also reads, computed exactly as ``SAM2ImagePredictor.set_image`` does;
- :func:`embed` and :func:`decode`, called by :mod:`pointsam_engine.sam.decode` for a SAM 2.1 model, which
  give SAM's shapes: low-res logits ``(n, k, 256, 256)`` and IoUs ``(n, k)``, under SAM's multimask rule and the
  same -0.5 pixel-centre shift (SAM 2.1's prompt encoder adds the same +0.5 as SAM's).

One difference from ``SAM2ImagePredictor``, on purpose: a chip smaller than 1024² is padded (bottom and right,
with the pixel mean, as SAM is), not stretched to 1024², so prompts, masks and the embedding cache share
SAM's geometry. Pixel normalisation is the same as SAM's (ImageNet's mean and std, times 255).

Checkpoints: the official ``sam2.1_hiera_{tiny,small,base_plus,large}.pt`` hold ``{"model": state_dict}``; the
size is read from the hiera trunk (width of its patch embedding, number of blocks). A merged adapter
(``pointsam export``) is written as ``{"format": "pointsam-sam2", "model_type", "image_size", "name", "provenance",
"model"}``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelError

SAM2_FORMAT = "pointsam-sam2"
INSTALL = 'pip install -e ".[sam2]"'
TRUNK = "image_encoder.trunk."


@dataclass(frozen=True)
class Sam2Arch:
    """One SAM 2.1 size: its type name, ``sam2``'s packaged config, and what identifies it in the weights."""

    model_type: str
    config: str  # a hydra config inside the sam2 package
    embed_dim: int  # hiera trunk width (patch embedding channels)
    depth: int  # hiera blocks, all stages together
    image_size: int = 1024  # the official models' input; the engine's own files may record a smaller one (tests)

    def to_dict(self) -> dict:
        return asdict(self)


SAM2_ARCHS: Dict[str, Sam2Arch] = {a.model_type: a for a in (
    Sam2Arch("hiera_t", "configs/sam2.1/sam2.1_hiera_t.yaml", 96, 12),
    Sam2Arch("hiera_s", "configs/sam2.1/sam2.1_hiera_s.yaml", 96, 16),
    Sam2Arch("hiera_b+", "configs/sam2.1/sam2.1_hiera_b+.yaml", 112, 24),
    Sam2Arch("hiera_l", "configs/sam2.1/sam2.1_hiera_l.yaml", 144, 48),
)}


class Sam2Embedding(NamedTuple):
    """A chip's SAM 2.1 embedding: what ``SAM2ImagePredictor`` keeps as ``_features`` (float32 on one device)."""

    image_embed: torch.Tensor  # (B, 256, 64, 64), no_mem_embed added
    feat_s0: torch.Tensor  # (B, 32, 256, 256), the decoder's conv_s0 already applied
    feat_s1: torch.Tensor  # (B, 64, 128, 128), the decoder's conv_s1 already applied

    @property
    def shape(self) -> torch.Size:
        """The image embedding's shape (what SAM's single-tensor embedding would have)."""
        return self.image_embed.shape

    @property
    def device(self) -> torch.device:
        return self.image_embed.device

    def float(self) -> "Sam2Embedding":
        return Sam2Embedding(*(t.float() for t in self))

    def to(self, device) -> "Sam2Embedding":
        return Sam2Embedding(*(t.to(device) for t in self))

    def to_numpy(self) -> Tuple[np.ndarray, ...]:
        """The three arrays, on the CPU (the embedding cache stores these)."""
        return tuple(t.detach().cpu().numpy() for t in self)

    @classmethod
    def from_numpy(cls, arrays: Sequence[np.ndarray], device) -> "Sam2Embedding":
        return cls(*(torch.from_numpy(np.asarray(a)).to(device) for a in arrays))


def is_sam2(sam: Any) -> bool:
    """Whether ``sam`` is a SAM 2.1 model built here (not a segment-anything ``Sam``)."""
    return bool(getattr(sam, "is_sam2", False))


def is_sam2_payload(payload: dict) -> bool:
    """Whether a loaded checkpoint holds SAM 2.1: the engine's merged format, or weights with a hiera trunk."""
    if payload.get("format") == SAM2_FORMAT:
        return True
    state = payload.get("model", payload)
    return isinstance(state, dict) and any(isinstance(k, str) and k.startswith(TRUNK) for k in state)


def require_sam2(path) -> None:
    """:class:`ModelError` in one line, naming the extra to install, when the ``sam2`` package is missing."""
    try:
        import sam2.build_sam  # noqa: F401
    except ImportError:
        raise ModelError(f"{path} is a SAM 2.1 checkpoint but the sam2 package is not installed; "
                         f"install it with {INSTALL}") from None


def detect_sam2_type(state: dict, path) -> str:
    """``hiera_t`` / ``hiera_s`` / ``hiera_b+`` / ``hiera_l`` from an official SAM 2.1 state dict's tensors."""
    try:
        embed_dim = int(state[TRUNK + "patch_embed.proj.weight"].shape[0])
    except (KeyError, AttributeError, IndexError):
        raise ModelError(f"{path} is not a SAM 2.1 checkpoint (no hiera patch embedding); "
                         "pass an official file such as sam2.1_hiera_tiny.pt") from None
    depth = len({m.group(1) for k in state if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", k))})
    for name, arch in SAM2_ARCHS.items():
        if (arch.embed_dim, arch.depth) == (embed_dim, depth):
            if "no_obj_embed_spatial" not in state:  # added by SAM 2.1
                raise ModelError(f"{path} holds SAM 2 (2.0) weights; the engine runs SAM 2.1: pass "
                                 f"sam2.1_hiera_*.pt (pointsam models pull {name})")
            return name
    raise ModelError(f"{path} holds a hiera encoder of width {embed_dim} and {depth} blocks, which is not a SAM 2.1 "
                     f"size ({', '.join(SAM2_ARCHS)}); pass an official SAM 2.1 checkpoint")


@lru_cache(maxsize=1)
def _model_class():
    """``SAM2Base`` with SAM's names and preprocessing (made once, on first use: sam2 is optional)."""
    from sam2.modeling.sam2_base import SAM2Base

    class PointSam2(SAM2Base):
        """``sam2``'s ``SAM2Base``, reached by SAM's names; see :mod:`pointsam_engine.sam.sam2_backend`."""

        is_sam2 = True

        @property
        def mask_decoder(self):
            return self.sam_mask_decoder

        @property
        def prompt_encoder(self):
            return self.sam_prompt_encoder

        def preprocess(self, x: torch.Tensor) -> torch.Tensor:
            """Normalise ``(B, 3, H, W)`` pixels in 0-255 and pad them to the model's square input, as SAM does."""
            x = (x - self.pixel_mean) / self.pixel_std
            return F.pad(x, (0, self.image_size - x.shape[-1], 0, self.image_size - x.shape[-2]))

        def encode_image(self, x: torch.Tensor, image_encoder: Optional[torch.nn.Module] = None) -> Sam2Embedding:
            """``SAM2ImagePredictor.set_image``'s features of a preprocessed batch; ``image_encoder`` replaces the
            model's own (an int8 copy, :func:`~pointsam_engine.sam.precision.encoder_runner`)."""
            backbone_out = (image_encoder or self.image_encoder)(x)
            if self.use_high_res_features_in_sam:  # as SAM2Base.forward_image
                fpn = backbone_out["backbone_fpn"]
                fpn[0] = self.sam_mask_decoder.conv_s0(fpn[0])
                fpn[1] = self.sam_mask_decoder.conv_s1(fpn[1])
            _, feats, _, sizes = self._prepare_backbone_features(backbone_out)
            if self.directly_add_no_mem_embed:
                feats[-1] = feats[-1] + self.no_mem_embed
            maps = [f.permute(1, 2, 0).reshape(x.shape[0], -1, *size) for f, size in zip(feats, sizes)]
            return Sam2Embedding(maps[-1], maps[0], maps[1])

    return PointSam2


def build_sam2_model(arch: Sam2Arch) -> torch.nn.Module:
    """A randomly initialised SAM 2.1 of ``arch`` on the CPU, in eval mode, built by ``sam2.build_sam.build_sam2``
    from its packaged config with the post-processing ``SAM2ImagePredictor`` uses (dynamic multimask)."""
    from sam2.build_sam import build_sam2

    from .model import SAM_PIXEL_MEAN, SAM_PIXEL_STD

    overrides = [] if arch.image_size == 1024 else [f"++model.image_size={arch.image_size}"]
    model = build_sam2(arch.config, ckpt_path=None, device="cpu", mode="eval", hydra_overrides_extra=overrides)
    model.__class__ = _model_class()  # adds names and methods only, no state
    model.register_buffer("pixel_mean", torch.tensor(SAM_PIXEL_MEAN).view(-1, 1, 1), False)
    model.register_buffer("pixel_std", torch.tensor(SAM_PIXEL_STD).view(-1, 1, 1), False)
    return model


def load_payload(payload: dict, path, model_type: Optional[str]) -> Tuple[torch.nn.Module, Sam2Arch, str, dict]:
    """``(model, arch, name, provenance)`` of a loaded SAM 2.1 checkpoint (official layout or the engine's merged
    format), on the CPU in eval mode; ``model_type`` is checked against the weights when given."""
    require_sam2(path)
    if payload.get("format") == SAM2_FORMAT:
        try:
            kind, state, name = payload["model_type"], payload["model"], str(payload.get("name", path.stem))
            image_size = int(payload.get("image_size", 1024))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{path} is a PointSAM SAM 2.1 file without a readable {exc.args[0]} (damaged or "
                             "hand-made); pass an intact file written by pointsam") from None
        provenance = payload.get("provenance", {})
        if kind not in SAM2_ARCHS or image_size % 64:
            raise ModelError(f"{path} records an unknown SAM 2.1 type {kind!r} or input size {image_size}; pass an "
                             "intact file written by pointsam")
    else:
        state, name, image_size = payload.get("model", payload), path.stem, 1024
        kind, provenance = detect_sam2_type(state, path), {"source": "official SAM 2.1 checkpoint"}
    if model_type is not None and model_type != kind:
        raise ModelError(f"--model-type {model_type} does not match {path}, which holds {kind} weights; "
                         f"drop --model-type or pass a {model_type} checkpoint")
    arch = dataclasses.replace(SAM2_ARCHS[kind], image_size=image_size)
    model = build_sam2_model(arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path} does not fit the SAM 2.1 {kind} architecture ({str(exc).splitlines()[0]}); "
                         "pass an unmodified SAM 2.1 checkpoint") from None
    return model, arch, name, provenance


def save_sam2_checkpoint(model: torch.nn.Module, arch: Sam2Arch, path, *, name: str,
                         provenance: Optional[dict] = None) -> None:
    """Write a SAM 2.1 model in the engine's own format (its type and provenance inside; weights as ``model``)."""
    torch.save({"format": SAM2_FORMAT, "version": 1, "name": name, "model_type": arch.model_type,
                "image_size": arch.image_size, "provenance": provenance or {}, "model": model.state_dict()}, path)


def embed(model, image: np.ndarray, valid: Optional[np.ndarray] = None, encode=None) -> Sam2Embedding:
    """:func:`pointsam_engine.sam.decode.embed` for SAM 2.1: the :class:`Sam2Embedding` of an ``HxWx3`` uint8 chip.

    ``encode`` maps the preprocessed batch to the embedding (another precision); default: the model's own."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    if valid is not None and not valid.all():
        x[:, torch.from_numpy(~valid)] = model.pixel_mean.cpu().reshape(3, 1)
    x = model.preprocess(x[None].to(model.pixel_mean.device))
    return (encode or model.encode_image)(x)


def decode(model, embedding: Sam2Embedding, prompts, multimask: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`pointsam_engine.sam.decode.decode` for SAM 2.1: logits ``(n, k, 256, 256)`` and IoUs ``(n, k)``.

    As ``SAM2ImagePredictor._predict``: a box becomes two corner points (labels 2 and 3) before the clicks, the
    image is repeated over the batch, the high-resolution features go to the decoder. ``multimask``: SAM 2.1's
    three masks (k = 3); else its single mask (k = 1), which in eval mode falls back to the best of the three
    when unstable (``dynamic_multimask_via_stability``, as the predictor builds it).
    """
    device = embedding.device
    coords, labels = [], []
    if prompts[0].box is not None:
        coords.append(np.stack([p.box for p in prompts]).reshape(-1, 2, 2) - 0.5)
        labels.append(np.tile([2, 3], (len(prompts), 1)))
    if len(prompts[0].points):
        coords.append(np.stack([p.points for p in prompts]) - 0.5)
        labels.append(np.stack([p.labels for p in prompts]))
    points = None
    if coords:
        points = (torch.as_tensor(np.concatenate(coords, axis=1), dtype=torch.float32, device=device),
                  torch.as_tensor(np.concatenate(labels, axis=1), dtype=torch.int, device=device))
    sparse, dense = model.sam_prompt_encoder(points=points, boxes=None, masks=None)
    logits, iou, _, _ = model.sam_mask_decoder(
        image_embeddings=embedding.image_embed, image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask,
        repeat_image=sparse.shape[0] > 1, high_res_features=[embedding.feat_s0, embedding.feat_s1])
    return logits, iou
