"""The arithmetic SAM's image encoder runs in (``--precision``), and which one ``auto`` picks.

- ``fp32``: float32, the reference; always available.
- ``bf16``: bfloat16 autocast on CPUs that compute it natively (AVX512-BF16 or AMX, read from the
  CPU's flags) and on GPUs that support it; 1.5-4x faster than fp32 on this project's CPU (AMX), by load.
- ``fp16``: float16 autocast, GPUs only.
- ``int8``: the encoder's ``Linear`` layers in dynamic int8 (torch's own kernels), CPUs only: for CPUs
  without native bf16, where bf16 is emulated and several times slower than fp32. On an AVX2-only AMD EPYC
  (no AVX-512, no bf16) vit_b ran 7.1 s per pass against 12.0 s in fp32 and 9.2 s through OpenVINO, which runs
  fp32 there (``benchmarks/bench_encoder.py``), in 1,620 MB against OpenVINO's 2,216.
- ``openvino``: the encoder converted to OpenVINO's CPU runtime (once per set of weights, kept on disk in
  :func:`openvino_cache_dir`), at OpenVINO's own default precision: bf16 on CPUs with native bf16, fp32 on others.
  SAM's encoders only (not SAM 2.1's). 2.3x faster than ``bf16`` and 4.9x faster than ``fp32`` for vit_b on this
  project's CPU (``benchmarks/bench_encoder_backends.py``, which also measured torch.compile and ONNX Runtime).
- ``auto``: on a CPU with native bf16, ``openvino`` for SAM models (else ``bf16``); on other x86 CPUs ``int8`` for
  SAM models (measured on an AVX2-only CPU; an AVX-512 CPU without bf16 was not measured); on other CPUs
  ``openvino`` (else fp32); SAM 2.1 models in bf16 on a CPU with native bf16, else fp32; on a CUDA GPU bf16 where
  supported, else fp16; fp32 on Apple GPUs.

Only the encoder changes: prompts are decoded in float32 on a float32 embedding. The figures behind these
choices, and the accuracy each keeps, are in the README's Performance section (``benchmarks/bench_encoder.py``);
``tests/engine/sam/test_precision.py`` checks the accuracy.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import hashlib
import itertools
import os
import platform
import tempfile
import threading
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Optional, Tuple

import torch

from ..errors import OptionError
from ..memory import glibc
from ..options import CHOICES
from . import openvino_convert
from .lora import merge_lora

PRECISIONS = CHOICES["encoder_precision"].values  # auto, fp32, bf16, fp16, int8, openvino
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX): as torch reads the CPU, on every
    system; else the x86 flags ``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo``."""
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):  # private, and newer than torch 2.1
        if getattr(torch.cpu, check, lambda: False)():
            return True
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def cpu_is_x86() -> bool:
    """Whether the CPU is x86-64 (where torch's int8 kernels were measured against OpenVINO)."""
    return platform.machine().lower() in {"x86_64", "amd64"}


def resolve_precision(precision: str = "auto", device: str = "cpu", sam2: bool = False) -> str:
    """The concrete precision (``fp32``, ``bf16``, ``fp16``, ``int8`` or ``openvino``) for ``precision`` on
    ``device`` (``sam2``: for a SAM 2.1 model); :class:`OptionError` for one the device or model cannot run."""
    kind = str(device).split(":")[0]
    CHOICES["encoder_precision"].check(precision, "--precision")
    if precision == "auto":
        if kind == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if kind != "cpu":
            return "fp32"
        if cpu_has_native_bf16():
            return "openvino" if openvino_available() and not sam2 else "bf16"
        if sam2:
            return "fp32"
        if cpu_is_x86():  # OpenVINO computes fp32 there: torch's int8 is faster and leaner
            return "int8"
        return "openvino" if openvino_available() else "fp32"
    if precision == "openvino" and (kind != "cpu" or sam2):
        raise OptionError(f"--precision openvino runs SAM's encoders on the CPU only; for this model on {device} "
                          "use auto, bf16 or fp32")
    if precision == "openvino" and not openvino_available():
        raise OptionError("--precision openvino needs the openvino package: pip install openvino (or use auto)")
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
    if precision == "openvino":
        return openvino_encoder(sam.image_encoder)
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


_MAKING = threading.Lock()  # one copy made at a time: clicks at once on a new model would make it twice (and
# OpenVINO's conversion, tracing the encoder, is not safe on two threads at once)


def _derived(encoder: torch.nn.Module, kind: str, make: Callable[[torch.nn.Module], object]):
    """``make(encoder)``, made once and kept on ``encoder`` for as long as its weights are unchanged."""
    attribute = f"_{kind}_copy"
    with _MAKING:
        weights = weights_state(encoder)
        cached = getattr(encoder, attribute, None)  # a plain attribute (a tuple): not a submodule, not saved
        if cached is None or cached[0] != weights:
            setattr(encoder, attribute, None)  # the stale copy is not kept (nor deep-copied) while making the new one
            cached = (weights, make(encoder))
            setattr(encoder, attribute, cached)
    return cached[1]


def int8_encoder(encoder: torch.nn.Module) -> torch.nn.Module:
    """``encoder`` with its ``Linear`` layers in dynamic int8, cached on it for as long as its weights are unchanged.
    An adapter's layers are folded into their qkv weights first (in the copy), so adapted layers are quantized too."""
    def quantize(module):
        # the copy's modules are new, its tensors the model's own (int8 adds ~1/4 of the Linear weights, no more)
        shared = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
        with warnings.catch_warnings():  # torch.ao's eager quantization is deprecated for torchao, whose int8
            warnings.simplefilter("ignore")  # ran slower than fp32 here (no torch.compile); see the README
            return torch.ao.quantization.quantize_dynamic(merge_lora(copy.deepcopy(module, shared)),
                                                          {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return _derived(encoder, "int8", quantize)


@lru_cache(maxsize=1)
def openvino_available() -> bool:
    """Whether the ``openvino`` package imports."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


_OPENVINO_GRAPH = "rel-pos-as-keys fp16-weights"  # in a converted encoder's name: a new graph gets new files


def openvino_cache_dir() -> Path:
    """Where converted encoders are kept: ``$XDG_CACHE_HOME/pointsam/openvino`` (default ``~/.cache/...``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pointsam" / "openvino"


def openvino_encoder(encoder: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``encoder`` compiled by OpenVINO for the CPU: a function from a preprocessed chip batch to the embedding.

    Converting traces the encoder in a child process (:mod:`~pointsam_engine.sam.openvino_convert`; about a minute
    for vit_b here), so the converted model is kept on disk, named by a digest of the weights (an adapter's weights
    get their own); later loads read it back in a few seconds.
    """
    return _derived(encoder, "openvino", _compile_openvino)


def mark_loaded_from(encoder: torch.nn.Module, sha256: str, path: Path) -> None:
    """Record that ``encoder``'s weights are those of the checkpoint file ``path`` with this sha256, as loaded.
    Weights loaded under ``torch.inference_mode()`` are not recorded: such tensors keep no count of their changes,
    so whether they are still as loaded cannot be told (their converted files are named by their bytes)."""
    if any(t.is_inference() for t in encoder.state_dict().values()):
        return
    stat = os.stat(path)
    # a plain attribute: not saved, not a submodule
    encoder._loaded_from = (sha256, weights_state(encoder), os.path.abspath(path),
                            (stat.st_ino, stat.st_size, stat.st_mtime_ns))


def _as_loaded(encoder: torch.nn.Module) -> Optional[tuple]:
    """What :func:`mark_loaded_from` recorded, while ``encoder``'s weights are still as loaded; else None."""
    loaded = getattr(encoder, "_loaded_from", None)
    return loaded if loaded is not None and loaded[1] == weights_state(encoder) else None


def loaded_checkpoint(encoder: torch.nn.Module) -> Optional[Tuple[str, str]]:
    """``(path, sha256)`` of the checkpoint file ``encoder`` was loaded from while its weights are still as loaded
    and the file still the one they came from; else None."""
    loaded = _as_loaded(encoder)
    if loaded is None:
        return None
    sha256, _, path, signature = loaded
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (path, sha256) if (stat.st_ino, stat.st_size, stat.st_mtime_ns) == signature else None


def weights_state(encoder: torch.nn.Module) -> tuple:
    """Which tensors the encoder holds, where their data lies and how often each was changed in place (cheap:
    no weight is read; plain numbers, so the module still pickles). Changes torch cannot see (writes through
    ``.data`` or numpy views) are not caught: optimizers, ``load_state_dict`` and adapters change weights in
    ways it sees."""
    return tuple((name, id(t), t.data_ptr(), t._version) for name, t in encoder.state_dict(keep_vars=True).items())


def _weights_digest(encoder: torch.nn.Module) -> str:
    """A digest naming the encoder's weights (and graph) for the converted files. Weights still as loaded are
    named by their file's sha256, so they are never read (the file maps them: unread, they take no memory);
    changed or added ones (training, an adapter's layers) by their bytes."""
    digest = hashlib.blake2b(f"{encoder.img_size} {_OPENVINO_GRAPH}".encode(), digest_size=16)
    loaded = _as_loaded(encoder)
    if loaded is not None:
        digest.update(f"file sha256 {loaded[0]}".encode())  # the sha256 names the weights, wherever the file is now
        return digest.hexdigest()
    for tensor in encoder.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _compile_openvino(encoder: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    import numpy as np
    import openvino as ov

    xml = openvino_cache_dir() / f"encoder-{_weights_digest(encoder)}.xml"
    if xml.exists() and xml.with_suffix(".bin").exists():
        compiled = _compiled(ov, xml)
    else:
        compiled = _converted_and_compiled(ov, encoder, xml)
    request = compiled.create_infer_request()
    # Threads (Dask's, the API's) take turns: the CPU runtime compiles one stream that already uses every core, so
    # requests of their own gained nothing, and two of them running their first inference at once (which fits the
    # dynamic input shape) may stall on few cores, the state a CI task was once found hung in.
    turn = threading.Lock()

    def run(x: torch.Tensor) -> torch.Tensor:
        chip = x.detach().cpu().numpy()
        with turn:
            result = request.infer(chip)
            return torch.from_numpy(np.array(result[compiled.output(0)])).to(x.device)  # a copy: the next call reuses

    return run


def _converted_and_compiled(ov, encoder: torch.nn.Module, xml: Path):
    """``encoder`` converted into the cache as ``xml`` and compiled; where the cache cannot be written, converted
    into a temporary folder, removed once compiled (the next process converts again)."""
    checkpoint = loaded_checkpoint(encoder)
    try:
        openvino_convert.convert(encoder, xml, checkpoint)
        return _compiled(ov, xml)
    except OSError:
        with tempfile.TemporaryDirectory(prefix="pointsam-openvino-") as tmp:
            openvino_convert.convert(encoder, Path(tmp) / xml.name, checkpoint)
            return _compiled(ov, Path(tmp) / xml.name)


def _compiled(ov, xml: Path):
    """The model in ``xml`` compiled for OpenVINO's CPU runtime, the calling thread's signal stack kept."""
    with _signal_stack_kept():
        return ov.Core().compile_model(xml, "CPU")


_SS_DISABLE = 2  # sigaltstack(2)


class _SignalStack(ctypes.Structure):
    """Linux's ``stack_t`` (sigaltstack(2))."""
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def _signal_stack_kept():
    """Puts the calling thread's alternate signal stack back as it was, on Linux.

    Compiling a model, OpenVINO's CPU runtime (2026.4) gives the thread an alternate signal stack of the model's
    own and, when the model is freed, puts back the one it found. Models freed out of that order (weights that
    change, an adapter's encoder dropped) leave the thread on a stack already unmapped, and the next signal handled
    there crashes the process: Python's handlers run on the alternate stack, so Ctrl-C or SIGTERM, which unwind
    a run cleanly (no temporary file left), ended in a segmentation fault instead."""
    libc = glibc()  # Linux's stack_t layout, as below
    if libc is None:
        yield
        return
    found = _SignalStack()
    libc.sigaltstack(None, ctypes.byref(found))
    try:
        yield
    finally:
        if libc.sigaltstack(ctypes.byref(found), None) != 0:
            # refused (with AMX in use the kernel wants a larger stack than some libraries set): no alternate stack
            # at all is safe, the model's own is not
            libc.sigaltstack(ctypes.byref(_SignalStack(None, _SS_DISABLE, 0)), None)
