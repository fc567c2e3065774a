"""Build SAM and load checkpoints: official state dicts, and the engine's own self-describing format.

Official checkpoints (``sam_vit_b_01ec64.pth`` and friends) are bare state dicts; their type
(vit_b / vit_l / vit_h) is read from the tensor shapes. The engine's own format is a dict with
``format: "pointsam-sam"`` that records the architecture, the pixel normalisation it expects and
its provenance, so nothing has to be guessed. Models are always built from segment-anything's own
classes. SAM 2.1 checkpoints (a hiera image encoder) load through :mod:`~pointsam_engine.sam.sam2_backend`,
with the optional ``sam2`` package's classes, into the same :class:`LoadedModel`. Like the rest of
:mod:`pointsam_engine.sam`, and nothing else in the engine, it imports torch (``tests/engine/test_torch_boundary.py``).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from ..catalog import CATALOG, file_sha256, installed_path, model_dirs  # noqa: F401 (file_sha256, model_dirs: imported from here too)
from ..errors import ModelError, OptionError
from ..memory import reuse_freed_buffers
from .encoder import use_fused_attention
from .precision import mark_loaded_from, resolve_precision
from .sam2_backend import SAM2_ARCHS, Sam2Arch, is_sam2_payload, load_payload

POINTSAM_FORMAT = "pointsam-sam"
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamArch:
    """Every hyper-parameter of a SAM; the official ones are in :data:`OFFICIAL_ARCHS`."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: Tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SamArch":
        data = dict(data)
        data["encoder_global_attn_indexes"] = tuple(data["encoder_global_attn_indexes"])
        return cls(**data)


OFFICIAL_ARCHS: Dict[str, SamArch] = {
    "vit_b": SamArch(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31)),
}

# registered names -> official file names (the catalogue's), looked up in the model folders (see :func:`model_dirs`)
REGISTERED: Dict[str, str] = {name: entry.file for name, entry in CATALOG.items()}
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "models"
BUNDLED: Dict[str, str] = {"pointsam-tiny": "pointsam-tiny.pt"}  # shipped inside the package
DEFAULT_MODEL = "pointsam-tiny"


@dataclass
class LoadedModel:
    """A SAM (or SAM 2.1) in eval mode on its device, with what identifies it in outputs and caches."""

    sam: Sam  # or sam2_backend's SAM 2.1 model, which answers to the same names
    name: str
    sha256: str
    model_type: str
    arch: Union[SamArch, Sam2Arch]
    device: str
    provenance: dict = field(default_factory=dict)
    adapter: Optional[str] = None  # ``name@sha256-prefix`` of an applied region adapter
    precision: str = "fp32"  # the image encoder's arithmetic (see :mod:`pointsam_engine.sam.precision`)

    @property
    def label(self) -> str:
        """``name@sha256-prefix`` (``/bf16`` unless fp32) (``+adapter@sha256-prefix``): written on every output
        feature, and part of every embedding's cache key."""
        base = f"{self.name}@{self.sha256[:12]}" + ("" if self.precision == "fp32" else f"/{self.precision}")
        return base if self.adapter is None else f"{base}+{self.adapter}"

    @property
    def image_size(self) -> int:
        return self.arch.image_size


def build_sam(arch: SamArch, pixel_mean=SAM_PIXEL_MEAN, pixel_std=SAM_PIXEL_STD) -> Sam:
    """A randomly initialised SAM with the given architecture (segment-anything's classes)."""
    embedding_size = arch.image_size // arch.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.encoder_num_heads,
            patch_size=arch.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=arch.encoder_global_attn_indexes,
            window_size=arch.window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=list(pixel_mean),
        pixel_std=list(pixel_std),
    )


def save_pointsam_checkpoint(sam: Sam, arch: SamArch, path, *, name: str, provenance: Optional[dict] = None) -> None:
    """Write a model in the engine's own format (architecture, normalisation and provenance inside)."""
    torch.save({
        "format": POINTSAM_FORMAT,
        "version": 1,
        "name": name,
        "arch": arch.to_dict(),
        "pixel_mean": sam.pixel_mean.flatten().tolist(),
        "pixel_std": sam.pixel_std.flatten().tolist(),
        "provenance": provenance or {},
        "state_dict": sam.state_dict(),
    }, path)


def resolve_model_path(model: Optional[str]) -> Path:
    """A checkpoint path from ``--model``: a file path, or a registered name found in :func:`model_dirs`."""
    model = str(model or DEFAULT_MODEL)
    if model in BUNDLED and not os.path.exists(model):
        path = BUNDLED_DIR / BUNDLED[model]
        if not path.exists():
            raise ModelError(f"the bundled model {model} is not in {BUNDLED_DIR}; reinstall pointsam "
                             "or pass --model with an official SAM checkpoint")
        return path
    key = model.removeprefix("sam2.1_").removeprefix("sam_")
    if key in REGISTERED and not os.path.exists(model):
        path = installed_path(key)
        if path is None:
            where = " or ".join(str(d) for d in model_dirs())
            raise ModelError(f"model {model!r} is not downloaded ({REGISTERED[key]} is not in {where}); "
                             f"get it with `pointsam models pull {key}` or pass --model PATH")
        return path
    path = Path(model)
    if not path.exists():
        names = ", ".join(sorted(REGISTERED) + sorted(BUNDLED))
        raise ModelError(f"checkpoint {model} does not exist; pass a SAM .pth file or a registered name ({names})")
    return path


def detect_model_type(state: dict, path) -> str:
    """``vit_b`` / ``vit_l`` / ``vit_h`` from an official state dict's tensor shapes."""
    try:
        embed_dim = int(state["image_encoder.patch_embed.proj.weight"].shape[0])
    except (KeyError, AttributeError, IndexError):
        raise ModelError(f"{path} is not a SAM checkpoint (no image_encoder.patch_embed weights); "
                         "pass an official file such as sam_vit_b_01ec64.pth") from None
    depth = len({m.group(1) for k in state if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
    for name, arch in OFFICIAL_ARCHS.items():
        if (arch.encoder_embed_dim, arch.encoder_depth) == (embed_dim, depth):
            return name
    raise ModelError(f"{path} holds a SAM image encoder of width {embed_dim} and depth {depth}, which is not "
                     "vit_b, vit_l or vit_h; pass an official checkpoint or a PointSAM model file")


def pick_device(device: str = "auto") -> str:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must be available."""
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else ("mps" if has_mps else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise OptionError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    if device == "mps" and not has_mps:
        raise OptionError("--device mps was asked for but this machine has no Apple GPU; use --device cpu or auto")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise OptionError(f"--device {device!r} is not known; use auto, cpu, cuda or mps")
    return device


def runtime() -> Dict[str, Optional[str]]:
    """``{"torch": version with its build, "gpu": the first CUDA GPU torch sees or None}`` (``GET /v1/health``)."""
    return {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def load_model(model: Optional[str] = None, *, model_type: Optional[str] = None, device: str = "auto",
               precision: str = "fp32") -> LoadedModel:
    """Load a SAM from a checkpoint path or a registered name, ready for inference.

    Args:
        model: path to an official SAM or SAM 2.1 checkpoint or a PointSAM model file, or a registered name.
        model_type: ``vit_b``, ``vit_l``, ``vit_h`` or a SAM 2.1 ``hiera_t``, ``hiera_s``, ``hiera_b+``,
            ``hiera_l``; checked against the weights when given.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        precision: the image encoder's arithmetic at inference: ``auto``, ``fp32``, ``bf16``, ``fp16``, ``int8`` or
            ``openvino`` (see :mod:`pointsam_engine.sam.precision`); weights stay float32, so training is unaffected.
    """
    if model_type is not None and model_type not in (*OFFICIAL_ARCHS, *SAM2_ARCHS):
        raise OptionError(f"--model-type {model_type!r} is not known; use one of "
                          f"{', '.join((*OFFICIAL_ARCHS, *SAM2_ARCHS))}")
    device = pick_device(device)
    if device == "cpu":
        reuse_freed_buffers()
    requested, precision = precision, resolve_precision(precision, device)
    path = resolve_model_path(model)
    sha256, payload = _read_checkpoint(path)
    if not isinstance(payload, dict):
        raise ModelError(f"{path} is not a SAM checkpoint (no state dict inside); "
                         "pass an official file such as sam_vit_b_01ec64.pth")
    if is_sam2_payload(payload):
        sam2, arch, name, provenance = load_payload(payload, path, model_type)
        sam2.eval().to(device)
        return LoadedModel(sam=sam2, name=name, sha256=sha256, model_type=arch.model_type, arch=arch,
                           device=device, provenance=provenance, precision=resolve_precision(requested, device, sam2=True))
    if payload.get("format") == POINTSAM_FORMAT:
        try:
            arch = SamArch.from_dict(payload["arch"])
            mean, std = payload["pixel_mean"], payload["pixel_std"]
            state, name, kind = payload["state_dict"], payload.get("name", path.stem), "pointsam"
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{path} is a PointSAM model file without a readable {exc.args[0] if exc.args else 'header'}"
                             " (damaged or hand-made); pass an intact file written by pointsam") from None
        provenance = payload.get("provenance", {})
        if model_type is not None:
            raise ModelError(f"--model-type {model_type} does not apply to {path}, a PointSAM model that records "
                             "its own architecture; drop --model-type")
    else:
        state = payload.get("model", payload.get("state_dict", payload))
        kind = detect_model_type(state, path)
        if model_type is not None and model_type != kind:
            raise ModelError(f"--model-type {model_type} does not match {path}, which holds {kind} weights; "
                             f"drop --model-type or pass a {model_type} checkpoint")
        arch, name, provenance = OFFICIAL_ARCHS[kind], path.stem, {"source": "official SAM checkpoint"}
        mean, std = SAM_PIXEL_MEAN, SAM_PIXEL_STD
    with torch.device("meta"):  # no random init, and the loaded tensors become the parameters
        sam = build_sam(arch, mean, std)
    try:
        sam.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelError(f"{path} does not fit the {kind} architecture ({str(exc).splitlines()[0]}); "
                         "pass an unmodified SAM checkpoint") from None
    sam.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), False)
    sam.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), False)
    use_fused_attention(sam).eval().to(device)
    mark_loaded_from(sam.image_encoder, sha256, path)
    return LoadedModel(sam=sam, name=name, sha256=sha256, model_type=kind, arch=arch,
                       device=device, provenance=provenance, precision=precision)


def _read_checkpoint(path: Path) -> tuple:
    """``(sha256, contents)`` of a checkpoint file, its tensors mapped from the file rather than read: weights
    that are never used stay on disk (the torch image encoder's ~360 MB for vit_b while OpenVINO runs the
    encoder). Where a file cannot be mapped (torch's legacy pre-zip format, a file system without mmap) it is
    read. The sha256 names the weights (outputs, caches), so a file replaced while it was loaded is refused.
    Replace model files by renaming a new file into place (as ``pointsam models pull`` does), never by
    rewriting one in place while an engine runs: mapped weights not yet read would change under it."""
    before = os.stat(path)
    sha256 = file_sha256(path)
    payload = None
    for mmap in (True, False):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except Exception:
            continue
    if payload is None:
        raise ModelError(f"{path} is not a SAM checkpoint (torch cannot load it); "
                         "pass an official file such as sam_vit_b_01ec64.pth")
    after = os.stat(path)
    if (before.st_ino, before.st_size, before.st_mtime_ns) != (after.st_ino, after.st_size, after.st_mtime_ns):
        raise ModelError(f"{path} changed while it was loaded (a download or copy still writing it?); "
                         "run again once it is complete")
    return sha256, payload
