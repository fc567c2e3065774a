"""The SAM façade the pipeline uses: encode a chip once, then decode many prompts on it.

``ChipPredictor.set_chip()`` runs the image encoder (or takes the embedding from the cache);
``predict()`` decodes prompts in batches and returns each object's mask as a :class:`MaskPatch`,
logits upsampled only around the object: stock ``postprocess_masks`` upsamples every low-res mask
to the full chip, which for a 50-prompt batch costs more than the decoder itself.

Coordinates are chip pixels with pixel centres at ``i + 0.5`` (x = column, y = row).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..masks import MASK_THRESHOLD, MaskPatch, Prompt
from .cache import EmbeddingCache
from .decode import decode_groups, decoder_batch_for, embed, embedding_from_numpy, embedding_to_numpy
from .mask_decoder import ImageContext, image_context
from .model import LoadedModel
from .precision import encoder_runner


def upsample_region(low_res: torch.Tensor, factor: int, out_shape) -> Optional[MaskPatch]:
    """Bilinearly upsample one ``h x w`` low-res logit map by ``factor``, only around its positive pixels.

    Identical, inside the returned window, to ``F.interpolate`` of the whole map (align_corners=False)
    cropped to ``out_shape``; every positive output pixel lies inside the window. ``None`` when empty.
    """
    h, w = low_res.shape
    positive = low_res > MASK_THRESHOLD
    rows = torch.nonzero(positive.any(dim=1)).flatten()
    cols = torch.nonzero(positive.any(dim=0)).flatten()
    if len(rows) == 0:
        return None
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    # a positive output pixel needs a positive low-res neighbour: keep one low-res pixel around the
    # positives, and read one more so the interpolation at the window's edge sees the same inputs
    lr0, lr1, lc0, lc1 = max(r0 - 2, 0), min(r1 + 3, h), max(c0 - 2, 0), min(c1 + 3, w)
    crop = low_res[lr0:lr1, lc0:lc1][None, None]
    up = F.interpolate(crop, scale_factor=factor, mode="bilinear", align_corners=False)[0, 0]
    keep_r0, keep_c0 = max(r0 - 1, 0) * factor, max(c0 - 1, 0) * factor
    keep_r1 = min(min(r1 + 2, h) * factor, out_shape[0])
    keep_c1 = min(min(c1 + 2, w) * factor, out_shape[1])
    if keep_r1 <= keep_r0 or keep_c1 <= keep_c0:
        return None
    window = up[keep_r0 - lr0 * factor: keep_r1 - lr0 * factor, keep_c0 - lc0 * factor: keep_c1 - lc0 * factor]
    return MaskPatch(keep_r0, keep_c0, window.float().cpu().numpy(), 0.0)


class ChipPredictor:
    """Encode a chip once with :meth:`set_chip`, then :meth:`predict` any number of prompts on it."""

    def __init__(self, model: LoadedModel, cache: Optional[EmbeddingCache] = None,
                 decoder_batch: Optional[int] = None):
        self.model = model
        self.cache = cache if cache is not None else EmbeddingCache()
        # prompts decoded together; None: as many as suit the model's size (decode.decoder_batch_for)
        self.decoder_batch = max(1, int(decoder_batch)) if decoder_batch is not None else \
            decoder_batch_for(model.sam, model.device)
        self.encoder_passes = 0
        self._encode = encoder_runner(model.sam, model.precision, model.device)
        self._embedding: Optional[torch.Tensor] = None
        self._context: Optional[ImageContext] = None  # the decoder's per-chip work, done once in set_chip
        self._key: Optional[str] = None  # the embedding cache's key of the chip held
        self._shape = (0, 0)

    @property
    def chip_size(self) -> int:
        return self.model.image_size

    @property
    def label(self) -> str:
        return self.model.label

    @property
    def precision(self) -> str:
        """The image encoder's arithmetic (``fp32``, ``bf16``, ``fp16`` or ``int8``)."""
        return self.model.precision

    @torch.inference_mode()
    def set_chip(self, image: np.ndarray, valid: Optional[np.ndarray] = None, key: Optional[str] = None) -> bool:
        """Set the chip to decode on: ``image`` is ``HxWx3`` uint8 with ``H, W <= chip_size``.

        ``valid`` (``HxW`` bool) marks pixels that hold data; others are shown to SAM as its padding
        (the pixel mean). Returns True when the encoder ran, False when ``key`` hit the cache.
        """
        if self.set_cached_chip(key, image.shape[:2]):
            return False
        self._shape = image.shape[:2]
        embedding = embed(self.model.sam, image, valid, self._encode)
        self.encoder_passes += 1
        if key:
            self.cache.put(key, embedding_to_numpy(embedding))
        self._hold(embedding, key)
        return True

    @torch.inference_mode()
    def set_cached_chip(self, key: Optional[str], shape: Tuple[int, int]) -> bool:
        """Set the chip ``key`` names without its pixels, when it is the chip set last or the embedding cache holds
        it (True); False otherwise, and nothing changes: then read the chip and :meth:`set_chip` it. ``shape``:
        the ``(H, W)`` its image has. The map tool's clicks on one chip cost neither a read nor a cache lookup."""
        if not key:
            return False
        if key != self._key:
            cached = self.cache.get(key)
            if cached is None:
                return False
            self._hold(embedding_from_numpy(cached, self.model.device), key)
        self._shape = tuple(shape)
        return True

    def _hold(self, embedding, key: Optional[str]) -> None:
        """Make ``embedding`` the chip's, with the decoder's per-chip work done once here."""
        self._embedding, self._key = embedding, key
        self._context = image_context(self.model.sam, embedding)

    @torch.inference_mode()
    def predict(self, prompts: Sequence[Prompt]) -> List[Optional[MaskPatch]]:
        """Decode each prompt; one :class:`MaskPatch` in chip pixels per prompt (``None``: empty mask).

        A single positive click uses SAM's multimask output and keeps the mask with the best
        predicted IoU; several clicks, or a box, use the single-mask output, as SAM recommends
        (:mod:`~pointsam_engine.sam.decode`).
        """
        if self._embedding is None:
            raise RuntimeError("call set_chip() with an image before predict()")
        results: List[Optional[MaskPatch]] = [None] * len(prompts)
        for batch in decode_groups(self.model.sam, self._embedding, prompts, self.decoder_batch, self._context):
            factor = self.chip_size // batch.logits.shape[-1]
            for b, (i, k) in enumerate(zip(batch.indices, batch.kept().tolist())):
                patch = upsample_region(batch.logits[b, k], factor, self._shape)
                if patch is not None:
                    patch.score = float(batch.iou[b, k])
                results[i] = patch
        return results
