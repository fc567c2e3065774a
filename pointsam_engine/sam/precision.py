"""The arithmetic SAM's image encoder runs in (``--precision``), and which one ``auto`` picks.

- ``fp32``: float32, the reference; always available.
- ``bf16``: bfloat16 autocast on CPUs that compute it natively (AVX512-BF16 or AMX, read from the
  CPU's flags) and on GPUs that support it; 1.5-4x faster than fp32 on this project's CPU (AMX), by load.
- ``fp16``: float16 autocast, GPUs only.
- ``int8``: the encoder's ``Linear`` layers in dynamic int8 (torch's own kernels), CPUs only: for CPUs
  without native bf16, where bf16 is emulated and about 6x slower than fp32. With this CPU limited to
  AVX2 it ran 1.6x faster than fp32, a figure from emulation only, so ``auto`` does not pick it.
- ``auto``: bf16 on a CPU with native bf16, else fp32; on a CUDA GPU bf16 where supported, else fp16;
  fp32 on Apple GPUs.

Only the encoder changes: prompts are decoded in float32 on a float32 embedding. The figures behind these
choices, and the accuracy each keeps, are in the README's Performance section (``benchmarks/bench_encoder.py``);
``tests/engine/sam/test_precision.py`` checks the accuracy.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import warnings
from collections.abc import Callable
from functools import lru_cache

import torch

from ..errors import OptionError
from ..options import CHOICES

PRECISIONS = CHOICES["encoder_precision"].values  # auto, fp32, bf16, fp16, int8
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bfloat16 in hardware (x86 flags ``avx512_bf16`` or ``amx_bf16``)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def resolve_precision(precision: str = "auto", device: str = "cpu") -> str:
    """The concrete precision (``fp32``, ``bf16``, ``fp16`` or ``int8``) for ``precision`` on ``device``;
    :class:`OptionError` for one the device cannot run."""
    kind = str(device).split(":")[0]
    CHOICES["encoder_precision"].check(precision, "--precision")
    if precision == "auto":
        if kind == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if kind == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and kind == "cpu":
        raise OptionError("--precision fp16 runs on GPUs only; on a CPU use auto, bf16 or int8")
    if precision == "int8" and kind != "cpu":
        raise OptionError(f"--precision int8 runs on the CPU only; on {device} use auto, fp16 or bf16")
    return precision


def encoder_runner(sam, precision: str, device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function mapping a preprocessed chip batch to SAM's image embedding (float32) in ``precision``
    (for SAM 2.1, its :class:`~pointsam_engine.sam.sam2_backend.Sam2Embedding`).

    The model's own weights stay float32 (adapters and training use them); ``int8`` runs a quantized copy of
    the encoder, made once and made again only when the weights change.
    """
    encoder = int8_encoder(sam.image_encoder) if precision == "int8" else sam.image_encoder
    if getattr(sam, "is_sam2", False):  # SAM 2.1: the hiera encoder, then its features as SAM2ImagePredictor takes them
        encoder = functools.partial(sam.encode_image, image_encoder=encoder)

    def run(x: torch.Tensor) -> torch.Tensor:
        with autocast(precision, device):
            return encoder(x).float()

    return run


def autocast(precision: str, device: str):
    """The autocast context of ``precision`` (bf16, fp16); no change for fp32 and int8."""
    if precision not in _AUTOCAST:
        return contextlib.nullcontext()
    return torch.autocast(str(device).split(":")[0], dtype=_AUTOCAST[precision])


def int8_encoder(encoder: torch.nn.Module) -> torch.nn.Module:
    """``encoder`` with its ``Linear`` layers in dynamic int8, cached on it for as long as its weights are unchanged."""
    weights = tuple((id(p), p._version) for p in encoder.parameters())
    cached = getattr(encoder, "_int8_copy", None)  # a plain attribute (a tuple): not a submodule, not saved
    if cached is None or cached[0] != weights:
        # the copy's modules are new, its tensors the model's own (int8 adds ~1/4 of the Linear weights, no more)
        shared = {id(t): t for t in itertools.chain(encoder.parameters(), encoder.buffers())}
        shared[id(cached)] = None
        with warnings.catch_warnings():  # torch.ao's eager quantization is deprecated for torchao, whose int8
            warnings.simplefilter("ignore")  # ran slower than fp32 here (no torch.compile); see the README
            quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(encoder, shared), {torch.nn.Linear},
                                                               dtype=torch.qint8, inplace=True)
        encoder._int8_copy = cached = (weights, quantized)
    return cached[1]
