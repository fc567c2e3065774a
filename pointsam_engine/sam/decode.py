"""Chips to embeddings and prompts to masks: the one place SAM's encoder and decoder are called, by the
engine (:class:`~pointsam_engine.sam.predict.ChipPredictor`) and by training (``training.objective``,
``training.selftrain``) alike, so the two can never decode differently.

- :func:`embed`: an ``HxWx3`` uint8 chip to SAM's image embedding ``(1, C, h, w)``.
- :func:`decode_groups`: prompts batched by :func:`layout` (click count, box or not, multimask or not), each
  batch decoded once by :func:`decode`.
- SAM's multimask rule: a single positive click without a box gets SAM's three masks (outputs 1..3) and the
  engine keeps the one the IoU head ranks first (:meth:`Decoded.kept`); any other prompt gets mask 0.
- Coordinates: prompts are chip pixels with pixel centres at ``i + 0.5`` (x = column, y = row); SAM's are
  pixel indices, so every coordinate is shifted by -0.5 here and nowhere else.
- SAM 2.1 models take the same calls: :func:`embed` and :func:`decode` hand them to
  :mod:`~pointsam_engine.sam.sam2_backend` first thing (same shapes, rule and shift; its embedding is three tensors).

Gradients flow: callers choose ``torch.no_grad`` / ``torch.inference_mode`` themselves.
"""

from __future__ import annotations

from itertools import groupby
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..masks import Prompt
from . import sam2_backend
from .mask_decoder import ImageContext, image_context, predict_masks
from .sam2_backend import Sam2Embedding, is_sam2

Encoder = Callable[[torch.Tensor], torch.Tensor]
Embedding = Union[torch.Tensor, Sam2Embedding]  # SAM's (1, C, h, w), or SAM 2.1's three tensors


def embed(sam, image: np.ndarray, valid: Optional[np.ndarray] = None, encode: Optional[Encoder] = None) -> torch.Tensor:
    """SAM's image embedding ``(1, C, h, w)`` of an ``HxWx3`` uint8 chip (``H, W <=`` the model's input size).

    ``valid`` (``HxW`` bool) marks pixels that hold data; the others are shown to SAM as its padding (the
    pixel mean). ``encode`` runs the image encoder on the preprocessed batch (e.g. in another precision,
    :func:`~pointsam_engine.sam.precision.encoder_runner`); default: ``sam.image_encoder`` as it is.
    A SAM 2.1 model gives a :class:`~pointsam_engine.sam.sam2_backend.Sam2Embedding` instead.
    """
    if is_sam2(sam):
        return sam2_backend.embed(sam, image, valid, encode)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    if valid is not None and not valid.all():
        x[:, torch.from_numpy(~valid)] = sam.pixel_mean.cpu().reshape(3, 1)
    x = sam.preprocess(x[None].to(sam.pixel_mean.device))
    return (encode or sam.image_encoder)(x)


def multimask(prompt: Prompt) -> bool:
    """Whether SAM's three masks are decoded for ``prompt``: a single positive click and no box."""
    return len(prompt.labels) == 1 and int(prompt.labels[0]) == 1 and prompt.box is None


def layout(prompt: Prompt) -> Tuple[int, bool, bool]:
    """What prompts must share to be decoded as one batch: click count (no padding tokens), box or not, and
    :func:`multimask` (the masks read)."""
    return len(prompt.points), prompt.box is not None, multimask(prompt)


class Decoded(NamedTuple):
    """One batch of prompts of one :func:`layout`, decoded: low-resolution logits and predicted IoUs."""

    indices: List[int]  # the prompts' positions in the list given to :func:`decode_groups`
    logits: torch.Tensor  # (n, k, h, w): k = 3 (SAM's outputs 1..3) for a multimask layout, else 1 (output 0)
    iou: torch.Tensor  # (n, k) the IoU head's predictions

    def kept(self) -> torch.Tensor:
        """``(n,)``: which of the ``k`` masks the engine keeps, the one the IoU head ranks first."""
        return self.iou.argmax(dim=1)


def decode(sam, embedding: torch.Tensor, prompts: Sequence[Prompt],
           context: Optional[ImageContext] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Low-resolution logits ``(n, k, h, w)`` and predicted IoUs ``(n, k)`` of prompts of one :func:`layout`.

    ``context``: :func:`~pointsam_engine.sam.mask_decoder.image_context` of ``embedding``, when the caller keeps
    it across calls (computed here otherwise).

    The decoder runs in float32 whatever the encoder's precision. Under bf16 autocast it was faster per vit_b
    prompt only on a CPU with AMX (slower with oneDNN held to AVX512-BF16, as on CPUs without AMX), and it moved
    the bundled model's masks about three times as far from fp32's as the encoder in bf16 alone did (measured
    once, 4 December 2026: commit 8bf3b69 gives the figures; no benchmark keeps them).
    """
    if is_sam2(sam):  # SAM 2.1's decoder reads the embedding's high-resolution maps too: no context
        return sam2_backend.decode(sam, embedding, prompts, multimask(prompts[0]))
    device = embedding.device
    points, boxes = None, None
    if len(prompts[0].points):
        coords = torch.as_tensor(np.stack([p.points for p in prompts]) - 0.5, dtype=torch.float32, device=device)
        points = (coords, torch.as_tensor(np.stack([p.labels for p in prompts]), dtype=torch.int, device=device))
    if prompts[0].box is not None:
        boxes = torch.as_tensor(np.stack([p.box for p in prompts]) - 0.5, dtype=torch.float32, device=device)
    sparse = sam.prompt_encoder(points=points, boxes=boxes, masks=None)[0]
    read = slice(1, 4) if multimask(prompts[0]) else slice(0, 1)
    return predict_masks(sam, image_context(sam, embedding) if context is None else context, sparse, read)


DECODER_BATCH_MB = 32  # on a CPU, prompts decoded together by default hold about this much
GPU_DECODER_BATCH = 8  # elsewhere: the batch every model had before (not measured against others on a GPU)


def decoder_batch_for(sam, device="cpu") -> int:
    """How many prompts to decode together by default. On a CPU, as many as fit :data:`DECODER_BATCH_MB` of the
    image-side work each prompt has of its own (the image rows the two-way transformer updates, then the 4x
    upscaled features, twice as many values): past the CPU's caches each prompt costs more. A full-size SAM
    (a 64² x 256 grid, 12 MB a prompt) then decodes 2 at a time, the bundled model (32² x 128) 21
    (``benchmarks/bench_decoder_batch.py`` prints both against other batch sizes)."""
    if str(device).split(":")[0] != "cpu":
        return GPU_DECODER_BATCH
    (h, w), width = sam.prompt_encoder.image_embedding_size, sam.mask_decoder.transformer_dim
    per_prompt = 3 * h * w * width * 4  # float32
    return max(1, DECODER_BATCH_MB * 2 ** 20 // per_prompt)


def decode_groups(sam, embedding: torch.Tensor, prompts: Sequence[Prompt], batch: Optional[int] = None,
                  context: Optional[ImageContext] = None) -> List[Decoded]:
    """Every prompt decoded once, in batches of one :func:`layout` and at most ``batch`` prompts (None: no limit).

    ``context``: as for :func:`decode`; computed once here otherwise, for all the batches.
    """
    context = image_context(sam, embedding) if context is None else context
    order = sorted(range(len(prompts)), key=lambda i: layout(prompts[i]))
    decoded = []
    for _, group in groupby(order, key=lambda i: layout(prompts[i])):
        group = list(group)
        step = batch or len(group)
        for start in range(0, len(group), step):
            chunk = group[start:start + step]
            decoded.append(Decoded(chunk, *decode(sam, embedding, [prompts[i] for i in chunk], context)))
    return decoded


def embedding_to_numpy(embedding: Embedding) -> Union[np.ndarray, Tuple[np.ndarray, ...]]:
    """An embedding as the cache keeps it: one array (SAM), or a tuple of arrays (SAM 2.1)."""
    return embedding.to_numpy() if isinstance(embedding, Sam2Embedding) else embedding.cpu().numpy()


def embedding_from_numpy(cached: Union[np.ndarray, Tuple[np.ndarray, ...]], device) -> Embedding:
    """The embedding :func:`embedding_to_numpy` gave, on ``device``."""
    if isinstance(cached, tuple):
        return Sam2Embedding.from_numpy(cached, device)
    return torch.from_numpy(cached).to(device)


def image_embedding(embedding: Embedding) -> torch.Tensor:
    """The ``(B, C, h, w)`` image embedding itself (SAM 2.1's without its high-resolution maps): what the
    prototypes pool."""
    return embedding.image_embed if isinstance(embedding, Sam2Embedding) else embedding
