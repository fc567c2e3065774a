"""Every option of a segmentation run, with its default, in one frozen dataclass.

The CLI and the HTTP API build a :class:`SegmentConfig`; the pipeline reads it and passes the
relevant fields down to each stage, so no module below reads options on its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

from .errors import OptionError

Stretch = Union[Tuple[float, float], str]  # (low, high) percentiles, "minmax" or "none"


@dataclass(frozen=True)
class SegmentConfig:
    """Options of :func:`pointsam_engine.segment`; every field mirrors a CLI flag."""

    # raster
    bands: Optional[Tuple[int, ...]] = None  # 1-based; None: RGB by colour interpretation, else first three
    stretch: Stretch = (2.0, 98.0)
    nodata: Optional[float] = None  # overrides the raster's nodata tag
    sar_db: bool = False
    assume_crs: Optional[str] = None  # for rasters that carry no CRS
    # points
    layer: Optional[str] = None
    instance_field: Optional[str] = None
    label_field: Optional[str] = None
    class_field: Optional[str] = None
    # chips
    chip_scale: float = 1.0  # >1 reads a larger area into each chip (coarser pixels)
    chip_margin: float = 0.25  # fraction of the chip size a point must keep from a chip edge
    # model
    model: Optional[str] = None  # path or registered name; None: the default registered model
    model_type: Optional[str] = None
    adapter: Optional[str] = None  # region adapter (LoRA) trained for ``model`` by ``pointsam train``
    device: str = "auto"
    cache_dir: Optional[str] = None
    cache_mb: int = 128  # in-memory embeddings (about 4 MB each for 1024² chips)
    # prediction and calibration
    calibration: bool = True
    calibration_iou: float = 0.1
    keep_overlaps: bool = False  # True: each object keeps its own mask where masks overlap (no pixel goes to the higher logit)
    decoder_batch: int = 8  # larger batches are no faster on a CPU and cost ~25 MB per prompt at 1024²
    # vectorize
    min_area: float = 0.0  # map units²
    max_hole_area: Optional[float] = None  # map units²; None: 25 pixels
    simplify: Optional[float] = None  # map units; None: one pixel
    # output
    out_crs: Optional[str] = None
    overwrite: bool = False

    def replace(self, **changes) -> "SegmentConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise OptionError(f"unknown option(s) {sorted(unknown)}; see help(pointsam_engine.SegmentConfig)")
        return dataclasses.replace(self, **changes)


def parse_stretch(text: str) -> Stretch:
    """Parse ``--stretch``: ``"2,98"`` (percentiles), ``"minmax"`` or ``"none"``."""
    value = text.strip().lower()
    if value in ("minmax", "none"):
        return value
    try:
        low, high = (float(part) for part in value.split(","))
    except ValueError:
        raise OptionError(f"--stretch {text!r} is not understood; use two percentiles like 2,98, or minmax, or none") from None
    if not 0 <= low < high <= 100:
        raise OptionError(f"--stretch {text!r} needs 0 <= low < high <= 100, e.g. 2,98")
    return (low, high)


def parse_bands(text: Union[str, Sequence[int], None]) -> Optional[Tuple[int, ...]]:
    """Parse ``--bands``: ``"3,2,1"`` or ``"1"`` (1-based band indexes)."""
    if text is None:
        return None
    if not isinstance(text, str):
        return tuple(int(b) for b in text)
    try:
        bands = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise OptionError(f"--bands {text!r} is not understood; give 1-based band numbers like 3,2,1 or 1") from None
    if len(bands) not in (1, 3):
        raise OptionError(f"--bands {text!r} names {len(bands)} bands; give one band (repeated to grey) or three")
    return bands
