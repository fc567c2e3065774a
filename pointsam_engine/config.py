"""Every option of a segmentation run, with its default, in one frozen dataclass; and ``pointsam train``'s defaults.

The CLI and the HTTP API build a :class:`SegmentConfig`; the pipeline reads it and passes the
relevant fields down to each stage, so no module below reads options on its own.

This module is the one home of every default: the click options (``pointsam segment``, ``serve``, ``train``),
the API's pydantic fields and ``training.config.TrainConfig`` read :class:`SegmentConfig`'s fields and
:data:`TRAIN`; the QGIS plugin, which cannot import the engine, reads ``qgis_plugin/defaults.py``, written
from them by :func:`write_plugin_defaults` (``python -m pointsam_engine.config qgis_plugin/defaults.py``) and
kept equal to them by ``tests/engine/test_config.py``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

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
    # the image encoder's arithmetic: auto, fp32, bf16, fp16, int8 or openvino; auto: the fastest the hardware runs
    # accurately (pointsam_engine.sam.precision.resolve_precision says which, and why)
    precision: str = "auto"
    cache_dir: Optional[str] = None
    cache_mb: int = 128  # in-memory embeddings (about 4 MB each for 1024² chips)
    # prediction and calibration
    calibration: bool = True
    calibration_iou: float = 0.1
    keep_overlaps: bool = False  # True: each object keeps its own mask where masks overlap (no pixel goes to the higher logit)
    # prompts decoded together; None: as many as suit the model's size (pointsam_engine.sam.decode.decoder_batch_for)
    decoder_batch: Optional[int] = None
    # vectorize
    # ground measures whatever the CRS (geodesic on geographic CRSs; see measure.grid_tolerances)
    min_area: float = 0.0  # m²: objects whose area_m2 is smaller are skipped
    max_hole_area: Optional[float] = None  # m²; None: 25 pixels
    simplify: Optional[float] = None  # metres; None: one pixel
    regularize: str = "none"  # what each does: options.CHOICES["regularize"].help
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
            parse_stretch(stretch_text(self.stretch))
        if self.bands is not None:
            parse_bands(",".join(str(b) for b in self.bands))
        check_crs(self.out_crs, "--out-crs")
        check_crs(self.assume_crs, "--assume-crs")

    def replace(self, **changes) -> "SegmentConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise OptionError(f"unknown option(s) {sorted(unknown)}; see help(pointsam_engine.SegmentConfig)")
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TrainDefaults:
    """``pointsam train``'s defaults. Declared in the engine because the HTTP API's train schema needs them and
    the engine never imports ``training``; ``training.config.TrainConfig`` and ``SelfTrainOptions`` read them."""

    steps: int = 400
    lr: float = 1e-4  # WeSAM's; PointSAM's 5e-4 drifts within 400 steps on the tiny model (docs/accuracy.md)
    seed: int = 0
    rank: int = 4  # LoRA rank
    val_fraction: float = 0.2
    val_every: int = 50
    checkpoint_every: int = 50
    background: int = 1  # random background negatives per object
    prototype_weight: float = 0.1
    anchor_weight: float = 1.0  # the base model's masks as an anchor against drift; 0: PointSAM as published
    accelerator: str = "auto"  # Lightning Fabric
    devices: int = 1
    strategy: str = "auto"
    precision: str = "32-true"


TRAIN = TrainDefaults()


@dataclass(frozen=True)
class BatchDefaults:
    """``pointsam batch``'s defaults (pointsam_engine.batch): how tasks are cut and run on Dask."""

    workers: Optional[int] = None  # LocalCluster worker processes; None: one per core (benchmarks/bench_batch.py)
    threads_per_worker: Optional[int] = None  # tasks a worker runs at once; None: the cores left per worker (>= 1)
    torch_threads: int = 1  # each task's torch threads: workers x threads tasks at once never oversubscribe the cores
    band_px: int = 16384  # a raster taller than this (working pixels) becomes bands of this many rows, a task each
    allowed_failures: int = 1  # a task whose worker dies more often than this ("lost twice") lands in `failed`
    work_suffix: str = ".work"  # OUT.gpkg's tasks are written into OUT.work/ beside it, one file each
    worker_log: str = "workers.log"  # in OUT.work/: what the local cluster's workers log, kept with the folder


BATCH = BatchDefaults()
FAILED = "failed"  # the layer of tasks that failed, with their one-line reason (pointsam batch)
INSTANCES = "instances"  # the layer of the objects' outlines: segment writes it, evaluate reads it by default
SERVE_CACHE_MB = 512  # pointsam serve's embedding cache: a server keeps chips across many runs and clicks
SERVE_MAX_PARALLEL = 1  # clicks running the encoder at once (each pass can hold hundreds of MB)
READ_CACHE_MB = 64  # GDAL's block cache in the engine's processes: GDAL's default, 5 % of the RAM (1.2 GB here),
# held 659 MB after 120 chips of a 20,000² raster; a chip of 512-px tiles needs ~12 MB. GDAL_CACHEMAX overrides it.


def stretch_text(stretch: Stretch) -> str:
    """``--stretch`` as typed: ``(2.0, 98.0)`` -> ``"2,98"``; ``"minmax"`` and ``"none"`` as they are."""
    if isinstance(stretch, str):
        return stretch
    return ",".join(f"{value:g}" for value in stretch)


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


# the options the QGIS plugin's Processing algorithms and dock offer, with the engine's defaults
PLUGIN_SEGMENT_OPTIONS = ("calibration", "calibration_iou", "chip_scale", "keep_overlaps", "min_area", "max_hole_area",
                          "simplify", "regularize", "sar_db", "stretch")
PLUGIN_TRAIN_OPTIONS = ("steps", "rank", "lr", "val_fraction", "anchor_weight")


def plugin_defaults() -> Dict[str, Dict[str, Any]]:
    """What ``qgis_plugin/defaults.py`` holds: ``SEGMENT`` and ``TRAIN`` (defaults), ``CHOICES`` (the words a
    choice option takes, the default first)."""
    from .options import CHOICES

    segment = SegmentConfig()
    values = {name: getattr(segment, name) for name in PLUGIN_SEGMENT_OPTIONS}
    values["stretch"] = stretch_text(segment.stretch)
    return {"SEGMENT": values, "TRAIN": {name: getattr(TRAIN, name) for name in PLUGIN_TRAIN_OPTIONS},
            "CHOICES": {"regularize": list(CHOICES["regularize"].values),
                        "precision": _default_first(CHOICES["encoder_precision"].values, segment.precision)}}


def _default_first(values, default) -> list:
    return [default] + [v for v in values if v != default]


def plugin_defaults_source() -> str:
    """The text of ``qgis_plugin/defaults.py``."""
    lines = ['"""The engine\'s defaults for the plugin, which cannot import the engine. Generated: do not edit.',
             "",
             "Written by ``python -m pointsam_engine.config qgis_plugin/defaults.py`` from",
             "``pointsam_engine.config`` (SegmentConfig, TRAIN); ``tests/engine/test_config.py`` fails when they differ.",
             '"""', ""]
    for name, values in plugin_defaults().items():
        lines += ["", f"{name} = {{", *(f"    {_literal(key)}: {_literal(value)}," for key, value in values.items()), "}"]
    return "\n".join(lines) + "\n"


def _literal(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, list)) else repr(value)


def write_plugin_defaults(path) -> Path:
    """Write :func:`plugin_defaults_source` to ``path`` (``qgis_plugin/defaults.py``)."""
    path = Path(path)
    path.write_text(plugin_defaults_source())
    return path


if __name__ == "__main__":
    print(write_plugin_defaults(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / "qgis_plugin/defaults.py"))
