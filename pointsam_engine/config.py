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
    # the image encoder's arithmetic: auto, fp32, bf16, fp16 or int8 (pointsam_engine.sam.precision); fp32 until a quiet
    # benchmark shows bf16 faster here (benchmarks/bench_encoder.py), so the default stays exact
    precision: str = "fp32"
    cache_dir: Optional[str] = None
    cache_mb: int = 128  # in-memory embeddings (about 4 MB each for 1024² chips)
    # prediction and calibration
    calibration: bool = True
    calibration_iou: float = 0.1
    keep_overlaps: bool = False  # True: each object keeps its own mask where masks overlap (no pixel goes to the higher logit)
    decoder_batch: int = 8  # larger batches are no faster on a CPU and cost ~25 MB per prompt at 1024²
    # vectorize
    # ground measures whatever the CRS (geodesic on geographic CRSs; see measure.grid_tolerances)
    min_area: float = 0.0  # m²: objects whose area_m2 is smaller are skipped
    max_hole_area: Optional[float] = None  # m²; None: 25 pixels
    simplify: Optional[float] = None  # metres; None: one pixel
    regularize: str = "none"  # buildings: right angles; ships: smoothed hulls (pointsam_engine.regularize)
    # output
    out_crs: Optional[str] = None
    overwrite: bool = False  # replace layers of the run's names in an existing GeoPackage (never other layers)

    def __post_init__(self) -> None:
        """Refuse what the CLI and the API refuse (:mod:`pointsam_engine.options`), before any work."""
        from .options import CHOICES, SEGMENT_NUMBERS, check_crs, check_device, check_numbers

        check_numbers(dataclasses.asdict(self), SEGMENT_NUMBERS)
        check_device(self.device)
        CHOICES["encoder_precision"].check(self.precision, "--precision")
        CHOICES["regularize"].check(self.regularize)
        if self.model_type is not None:
            CHOICES["model_type"].check(self.model_type)
        if isinstance(self.stretch, str):
            if self.stretch not in ("minmax", "none"):
                raise OptionError(f"--stretch {self.stretch!r} is not understood; use two percentiles like 2,98, "
                                  "or minmax, or none")
        else:
            parse_stretch(",".join(str(v) for v in self.stretch))
        if self.bands is not None:
            parse_bands(",".join(str(b) for b in self.bands))
        check_crs(self.out_crs, "--out-crs")
        check_crs(self.assume_crs, "--assume-crs")

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
    if any(b < 1 or b > 100_000 for b in bands):
        raise OptionError(f"--bands {text!r} must be 1-based band numbers like 3,2,1 (the first band is 1)")
    if len(bands) not in (1, 3):
        raise OptionError(f"--bands {text!r} names {len(bands)} bands; give one band (repeated to grey) or three")
    return bands
