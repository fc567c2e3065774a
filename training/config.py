"""The settings of one ``pointsam train`` run, the files it writes, and the checks made before anything runs.

:func:`check_inputs` refuses, in one line, a run that would only fail later: unpaired inputs, numbers out of
range, rasters or point layers that cannot be read, an output that cannot be written or is an input, an
existing adapter without ``overwrite``, ``resume`` without a checkpoint of this run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

from pointsam_engine.config import TRAIN, SegmentConfig
from pointsam_engine.errors import OptionError, PointsError, RasterError
from pointsam_engine.output import check_target

from .checkpoint import read_checkpoint
from .selftrain import SelfTrainOptions


class RunFiles(NamedTuple):
    """The files a run writes: the adapter (the output), and beside it the checkpoint, the CSV log and its plot."""

    adapter: Path
    checkpoint: Path
    csv: Path
    plot: Path


@dataclass
class TrainConfig:
    """One ``pointsam train`` run: inputs (rasters paired with point layers), output, and hyper-parameters."""

    rasters: Sequence[str]
    points: Sequence[str]
    output: str
    model: Optional[str] = None  # default: the bundled model
    val_polygons: Sequence[Optional[str]] = ()
    train_masks: Sequence[Optional[str]] = ()  # reference polygons: only for the mask-supervised upper bound
    steps: int = TRAIN.steps  # defaults: pointsam_engine.config.TRAIN (the HTTP API's schema reads them too)
    lr: float = TRAIN.lr  # WeSAM's; why not PointSAM's 5e-4: docs/accuracy.md
    weight_decay: float = 1e-4
    warmup: int = 25
    seed: int = TRAIN.seed
    rank: int = TRAIN.rank
    blocks: Optional[Sequence[int]] = None  # default: all encoder blocks but the first
    train_decoder: bool = False
    val_fraction: float = TRAIN.val_fraction
    val_every: int = TRAIN.val_every
    checkpoint_every: int = TRAIN.checkpoint_every
    bank_size: int = 128
    match_interval: int = 30
    target_chips: int = 64  # chips whose base-model features give the target prototypes
    selftrain: SelfTrainOptions = field(default_factory=SelfTrainOptions)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    accelerator: str = TRAIN.accelerator
    devices: int = TRAIN.devices
    strategy: str = TRAIN.strategy
    precision: str = TRAIN.precision
    resume: bool = False
    overwrite: bool = False

    def files(self) -> RunFiles:
        """``NAME.adapter.pt`` and, beside it, ``NAME.ckpt``, ``NAME.csv`` and ``NAME.png``."""
        from pointsam_engine.sam.adapter import adapter_stem

        out = Path(self.output)
        stem = adapter_stem(out)
        return RunFiles(adapter=out, checkpoint=out.with_name(stem + ".ckpt"), csv=out.with_name(stem + ".csv"),
                        plot=out.with_name(stem + ".png"))


def check_inputs(cfg: TrainConfig) -> None:
    """Raise the run's first problem as one-line :class:`~pointsam_engine.errors.PointSamError`; nothing is written."""
    from pointsam_engine.options import CHOICES, TRAIN_NUMBERS, check_numbers

    values = {**dataclasses.asdict(cfg.selftrain), **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)},
              "chip_scale": cfg.segment.chip_scale, "nodata": cfg.segment.nodata}
    check_numbers(values, TRAIN_NUMBERS)
    CHOICES["accelerator"].check(cfg.accelerator)
    CHOICES["precision"].check(str(cfg.precision))
    from pointsam_engine.sam.adapter import ADAPTER_SUFFIX

    check_target(cfg.output, cfg.overwrite or cfg.resume, suffix=ADAPTER_SUFFIX, kind="an adapter file")
    _check_pairs(cfg)
    _check_files_exist(cfg)
    _check_outputs_are_not_inputs(cfg)
    _check_readable(cfg)
    if cfg.resume:
        _check_checkpoint(cfg)


def _check_checkpoint(cfg: TrainConfig) -> None:
    """``resume`` needs the checkpoint beside the output, with the keys this run writes."""
    checkpoint = cfg.files().checkpoint
    if not checkpoint.is_file():
        raise OptionError(f"--resume: no checkpoint {checkpoint}; run without --resume to start")
    read_checkpoint(checkpoint, cfg.train_decoder)


def _check_pairs(cfg: TrainConfig) -> None:
    """Rasters paired with point layers (and with polygons where given); a split and a step count that can run."""
    if len(cfg.rasters) != len(cfg.points) or not cfg.rasters:
        raise OptionError("give --raster and --points in pairs, at least one pair")
    if cfg.val_polygons and len(cfg.val_polygons) != len(cfg.rasters):
        raise OptionError("give one --val-polygons per --raster (in the same order), or none")
    if cfg.selftrain.supervised and len(cfg.train_masks) != len(cfg.rasters):
        raise OptionError("mask-supervised training needs reference polygons for every raster")
    if not 0 <= cfg.val_fraction < 1:
        raise OptionError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.steps < 1:
        raise OptionError(f"--steps must be at least 1, got {cfg.steps}")


def _check_files_exist(cfg: TrainConfig) -> None:
    for paths, error in ((cfg.rasters, RasterError), (cfg.points, PointsError), (cfg.val_polygons, OptionError)):
        for path in paths:
            if path and not Path(path).is_file():
                raise error(f"{path} does not exist; check the path")


def _check_outputs_are_not_inputs(cfg: TrainConfig) -> None:
    from pointsam_engine.output import check_distinct

    files = cfg.files()
    inputs = {f"{option} {p}": p for option, ps in (("--raster", cfg.rasters), ("--points", cfg.points),
                                                    ("--val-polygons", cfg.val_polygons)) for p in ps if p}
    check_distinct({"-o": files.adapter, "its log": files.csv, "its checkpoint": files.checkpoint,
                    "its plot": files.plot}, inputs)


def _check_readable(cfg: TrainConfig) -> None:
    """Each raster opens with the run's band and CRS options, and each point or polygon file is a vector layer."""
    import pyogrio

    from pointsam_engine.raster import Raster

    seg = cfg.segment
    for raster in cfg.rasters:
        Raster(raster, bands=seg.bands, nodata=seg.nodata, assume_crs=seg.assume_crs, chip_scale=seg.chip_scale).close()
    for what, path, layer in [*(("point layer", p, seg.layer) for p in cfg.points),
                              *(("--val-polygons", p, None) for p in cfg.val_polygons if p)]:
        try:
            info = pyogrio.read_info(str(path), layer=layer)
        except Exception as exc:  # pyogrio's DataSource/DataLayer errors: not a vector file, no such layer
            first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise PointsError(f"{what} {path} cannot be read ({first}); give a GeoPackage, Shapefile or GeoJSON") from None
        wanted = "the reference polygons" if what == "--val-polygons" else "a point layer"
        if not info.get("geometry_type"):
            raise PointsError(f"{what} {path} has no geometries (a table, e.g. a CSV); give {wanted}")
        kind = str(info["geometry_type"]).lower()
        if what == "--val-polygons" and "polygon" not in kind:
            raise PointsError(f"--val-polygons {path} holds {kind}, not polygons; give the reference polygons of the "
                              "raster's objects")
