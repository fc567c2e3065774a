"""``pointsam train``: adapt a SAM to a region from its point layers alone (the PointSAM method).

The base model stays frozen; LoRA adapters on the image encoder's q and v projections learn from
self-training on the region's chips (:mod:`training.selftrain`), regularised by prototypes
(:mod:`training.prototypes`) and anchored to the base model's masks against drift. Lightning Fabric
carries device, precision and strategy, so the same loop runs on this CPU and on several GPUs
(``--accelerator gpu --devices 4 --strategy ddp``).

Nothing is lost: a checkpoint (adapter, optimiser, schedule, random state, prototype bank, history)
is written atomically every ``checkpoint_every`` steps and on Ctrl-C, and ``resume`` continues to the
same result as an uninterrupted run. The adapter file keeps the weights that scored best on the
validation blocks; there is no test set in the loop. Every loss term and validation figure goes to
``<output>.csv`` and a plot of them to ``<output>.png``, among them ``area_vs_base``: how much the held-out
masks have grown against the base model's, the form self-training's drift takes (docs/accuracy.md).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from pointsam_engine.config import SegmentConfig
from pointsam_engine.errors import Cancelled, OptionError, PointsError, RasterError
from pointsam_engine.masks import Prompt
from pointsam_engine.output import atomic_path, check_target
from pointsam_engine.sam.adapter import save_adapter
from pointsam_engine.sam.lora import add_lora, load_lora_state_dict, lora_state_dict
from pointsam_engine.sam.model import LoadedModel, load_model

from .prototypes import PrototypeRegularizer, instance_features, target_prototypes
from .regions import Region, load_region
from .selftrain import SelfTrainOptions, embed, kept_masks, selftrain_step


@dataclass
class TrainConfig:
    rasters: Sequence[str]
    points: Sequence[str]
    output: str
    model: Optional[str] = None  # default: the bundled model
    val_polygons: Sequence[Optional[str]] = ()
    train_masks: Sequence[Optional[str]] = ()  # reference polygons: only for the mask-supervised upper bound
    steps: int = 400
    lr: float = 1e-4  # WeSAM's; PointSAM's 5e-4 drifts within 400 steps on the tiny model (docs/accuracy.md)
    weight_decay: float = 1e-4
    warmup: int = 25
    seed: int = 0
    rank: int = 4
    blocks: Optional[Sequence[int]] = None  # default: all encoder blocks but the first
    train_decoder: bool = False
    val_fraction: float = 0.2
    val_every: int = 50
    checkpoint_every: int = 50
    bank_size: int = 128
    match_interval: int = 30
    target_chips: int = 64  # chips whose base-model features give the target prototypes
    selftrain: SelfTrainOptions = field(default_factory=SelfTrainOptions)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    accelerator: str = "auto"
    devices: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    resume: bool = False
    overwrite: bool = False

    def paths(self) -> Dict[str, Path]:
        out = Path(self.output)
        stem = out.name[: -len(".adapter.pt")] if out.name.endswith(".adapter.pt") else out.stem
        return {"adapter": out, "checkpoint": out.with_name(stem + ".ckpt"), "csv": out.with_name(stem + ".csv"),
                "plot": out.with_name(stem + ".png")}


class _Step(nn.Module):
    """One self-training step as a module's forward, so distributed strategies see a forward pass."""

    def __init__(self, sam):
        super().__init__()
        self.sam = sam

    def forward(self, chip, opts, rng, regularizer):
        result = selftrain_step(self.sam, chip, opts, rng, regularizer)
        return result.loss, result.terms, result.teacher_features


def train(cfg: TrainConfig, echo: Callable[[str], None] = print, progress: Optional[Callable[[float, str], None]] = None,
          cancel: Optional[threading.Event] = None) -> dict:
    """Train an adapter; returns the summary (best validation, paths).

    ``progress(fraction, stage)`` is called after every step; setting ``cancel`` stops the run at the
    next step with a checkpoint saved (``resume`` continues it) and raises :class:`Cancelled`.
    """
    from lightning_fabric import Fabric
    from tqdm import tqdm

    check_inputs(cfg)
    paths = cfg.paths()
    try:
        fabric = Fabric(accelerator=cfg.accelerator, devices=cfg.devices, strategy=cfg.strategy, precision=cfg.precision)
    except Exception as exc:  # Lightning's MisconfigurationException, ValueError, RuntimeError: no such device here
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise OptionError(f"--accelerator {cfg.accelerator} --devices {cfg.devices} --strategy {cfg.strategy} "
                          f"--precision {cfg.precision} cannot run here ({first}); use --accelerator cpu --devices 1, "
                          "or the devices this machine has") from None
    fabric.launch()
    lead = fabric.is_global_zero  # with several devices, one process validates and writes every file
    if not lead:
        echo = lambda _: None  # noqa: E731
    shared = np.random.default_rng(cfg.seed)  # the same split and target prototypes in every process
    # one stream when one process trains; with several, each samples its own chips and views
    rng = shared if fabric.world_size == 1 else np.random.default_rng([cfg.seed, fabric.global_rank])
    torch.manual_seed(cfg.seed)
    base = load_model(cfg.model, device="cpu")
    regions = _load_regions(cfg, base.image_size, shared, echo)
    chips = [c for r in regions for c in r.chips if len(c.owned)]
    if not chips:
        raise PointsError("every click fell into the validation blocks; lower --val-fraction or give more clicks")
    add_lora(base.sam, rank=cfg.rank, blocks=cfg.blocks)
    if cfg.train_decoder:
        base.sam.mask_decoder.requires_grad_(True)
    step_module = _Step(base.sam)
    params = [p for p in base.sam.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)))
    step_module, optimizer = fabric.setup(step_module, optimizer)
    base = dataclasses.replace(base, device=str(fabric.device))
    state = {"step": 0, "history": [], "best": None, "best_lora": None, "rng": rng.bit_generator.state}
    regularizer = None
    if cfg.resume:
        regularizer = _restore(paths["checkpoint"], base.sam, optimizer, schedule, state, rng, cfg)
        echo(f"resuming at step {state['step']} from {paths['checkpoint']}")
    elif cfg.selftrain.prototypes:
        regularizer = PrototypeRegularizer(_targets(base.sam, chips, cfg, shared), cfg.bank_size, cfg.match_interval)
    fabric.seed_everything(cfg.seed, verbose=False)
    log = _CsvLog(paths["csv"], append=cfg.resume, enabled=lead)
    log.trim(state["step"])  # rows written after the checkpoint that is resumed are redone

    def validate() -> None:
        if lead:
            _validate(base, regions, cfg, state, log, echo)
        fabric.barrier()

    def checkpoint() -> None:
        if lead:
            _checkpoint(paths["checkpoint"], base.sam, optimizer, schedule, state, regularizer, cfg)

    if state["step"] == 0 and cfg.val_fraction > 0:
        validate()
    start, bar = time.time(), tqdm(total=cfg.steps, initial=state["step"], desc="train",
                             disable=fabric.global_rank > 0 or not sys.stderr.isatty())
    try:
        while state["step"] < cfg.steps:
            if cancel is not None and cancel.is_set():
                checkpoint()
                raise Cancelled(f"training cancelled at step {state['step']}; no adapter written, "
                                f"resume from {paths['checkpoint']} with resume")
            state["rng"] = rng.bit_generator.state  # a checkpoint taken inside this step restarts it
            chip = chips[int(rng.integers(len(chips)))]
            base.sam.train()
            loss, terms, teacher_features = step_module(chip, cfg.selftrain, rng, regularizer)
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            optimizer.step()
            schedule.step()
            state["step"] += 1
            if regularizer is not None and teacher_features is not None:
                regularizer.update(state["step"], teacher_features)
            log.write({"step": state["step"], "lr": schedule.get_last_lr()[0], **terms})
            bar.update(1)
            bar.set_postfix(loss=f"{terms['loss']:.3f}")
            if progress is not None:
                progress(state["step"] / cfg.steps, f"step {state['step']}/{cfg.steps}")
            if cfg.val_fraction > 0 and (state["step"] % cfg.val_every == 0 or state["step"] == cfg.steps):
                validate()
            if state["step"] % cfg.checkpoint_every == 0 or state["step"] == cfg.steps:
                state["rng"] = rng.bit_generator.state
                checkpoint()
    except KeyboardInterrupt:
        checkpoint()
        bar.close()
        raise
    bar.close()
    if lead and hasattr(cancel, "commit"):  # an API job: a cancel is honoured until the adapter is written
        cancel.commit()
    summary = _finish(base, cfg, state, paths, regions, time.time() - start, echo) if lead else {}
    fabric.barrier()
    return summary


def check_inputs(cfg: TrainConfig) -> None:
    """Refuse a run that would fail later: unpaired inputs, bad numbers, unreadable rasters or point layers, an
    output that cannot be written (or is an input), an existing adapter, a missing checkpoint."""
    from pointsam_engine.options import CHOICES, TRAIN_NUMBERS, check_numbers
    from pointsam_engine.output import check_distinct

    values = {**asdict(cfg.selftrain), **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)},
              "chip_scale": cfg.segment.chip_scale, "nodata": cfg.segment.nodata}
    check_numbers(values, TRAIN_NUMBERS)
    CHOICES["accelerator"].check(cfg.accelerator)
    CHOICES["precision"].check(str(cfg.precision))
    check_target(cfg.output, cfg.overwrite or cfg.resume, suffix=".pt", kind="an adapter file")
    paths = cfg.paths()
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
    for paths_of, error in ((cfg.rasters, RasterError), (cfg.points, PointsError), (cfg.val_polygons, OptionError)):
        for path in paths_of:
            if path and not Path(path).is_file():
                raise error(f"{path} does not exist; check the path")
    inputs = {f"{option} {p}": p for option, ps in (("--raster", cfg.rasters), ("--points", cfg.points),
                                                    ("--val-polygons", cfg.val_polygons)) for p in ps if p}
    check_distinct({"-o": paths["adapter"], "its log": paths["csv"], "its checkpoint": paths["checkpoint"],
                    "its plot": paths["plot"]}, inputs)
    _check_readable(cfg)
    if cfg.resume and not paths["checkpoint"].is_file():
        raise OptionError(f"--resume: no checkpoint {paths['checkpoint']}; run without --resume to start")


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
        if not info.get("geometry_type"):
            raise PointsError(f"{what} {path} has no geometries (a table, e.g. a CSV); give a point layer")


def _load_regions(cfg: TrainConfig, chip_size: int, rng, echo) -> List[Region]:
    regions = []
    for i, (raster, points) in enumerate(zip(cfg.rasters, cfg.points)):
        truth = cfg.train_masks[i] if cfg.selftrain.supervised else None
        region = load_region(i, raster, points, cfg.segment, chip_size, val_fraction=cfg.val_fraction, rng=rng,
                             truth=truth)
        echo(f"{raster}: {len(region.instances)} objects ({int(region.val.sum())} held out for validation), "
             f"{len(region.chips)} training chips")
        regions.append(region)
    return regions


def _targets(sam, chips, cfg: TrainConfig, rng) -> torch.Tensor:
    """Target prototypes: FINCH over the base model's mask-pooled features of the training objects."""
    features = []
    with torch.no_grad():
        for k in rng.permutation(len(chips))[: cfg.target_chips]:
            chip = chips[k]
            embedding = embed(sam, chip.image)
            prompts = [Prompt(chip.positives[i], np.ones(len(chip.positives[i]), int)) for i in chip.owned]
            masks = torch.from_numpy(np.stack([p.logits > 0 for p in kept_masks(sam, embedding, prompts)]))
            features.append(instance_features(embedding, masks))
    return target_prototypes(torch.cat(features))


def _validate(model: LoadedModel, regions, cfg: TrainConfig, state: dict, log, echo) -> None:
    from .validation import area_growth, validate

    model.sam.eval()
    figures, areas = validate(model, regions, cfg.segment, cfg.val_polygons or None)
    if state["step"] == 0:  # LoRA's B is zero: these are the base model's masks
        state["base_areas"] = areas
    figures["area_vs_base"] = area_growth(areas, state.get("base_areas", {}))
    score = figures.get("miou", figures["single_click_share"])  # area_vs_base informs; it does not choose
    entry = {"step": state["step"], **figures}
    state["history"].append(entry)
    log.write(entry)
    if not math.isnan(score) and (state["best"] is None or score > state["best"]["score"]):
        state["best"] = {"step": state["step"], "score": score, **figures}
        state["best_lora"] = _trained_state(model.sam, cfg)
    echo("validation at step {}: {}".format(state["step"], ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                                    for k, v in figures.items())))


def _trained_state(sam, cfg: TrainConfig) -> dict:
    state = {"lora": lora_state_dict(sam)}
    if cfg.train_decoder:
        state["decoder"] = copy.deepcopy(sam.mask_decoder.state_dict())
    return state


def _checkpoint(path: Path, sam, optimizer, schedule, state, regularizer, cfg: TrainConfig) -> None:
    payload = {"state": dict(state), "trained": _trained_state(sam, cfg),
               "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
               "regularizer": None if regularizer is None else regularizer.state_dict()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _restore(path: Path, sam, optimizer, schedule, state, rng, cfg: TrainConfig):
    payload = torch.load(path, map_location="cpu", weights_only=False)  # our own file: holds the random state
    load_lora_state_dict(sam, payload["trained"]["lora"])
    if "decoder" in payload["trained"]:
        sam.mask_decoder.load_state_dict(payload["trained"]["decoder"])
    optimizer.load_state_dict(payload["optimizer"])
    schedule.load_state_dict(payload["schedule"])
    state.update(payload["state"])
    rng.bit_generator.state = state["rng"]
    if payload["regularizer"] is None:
        return None
    return PrototypeRegularizer.from_state_dict(payload["regularizer"])


def _finish(model: LoadedModel, cfg: TrainConfig, state: dict, paths, regions, seconds: float, echo) -> dict:
    best = state["best"]
    if best is not None:
        load_lora_state_dict(model.sam, state["best_lora"]["lora"])
        if "decoder" in state["best_lora"]:
            model.sam.mask_decoder.load_state_dict(state["best_lora"]["decoder"])
    config = {k: v for k, v in asdict(cfg).items() if k not in ("segment", "selftrain")}
    config.update(segment=asdict(cfg.segment), selftrain=asdict(cfg.selftrain), kept_step=best["step"] if best else state["step"])
    save_adapter(model.sam, paths["adapter"], base=model, config=config, history=state["history"],
                 normalization={r.raster: r.norm.to_dict() for r in regions}, decoder=cfg.train_decoder)
    _plot(paths["csv"], paths["plot"])
    echo(f"adapter: {paths['adapter']} (weights of step {config['kept_step']}); log {paths['csv']}, plot {paths['plot']}")
    return {"best": best, "steps": state["step"], "seconds": seconds, **{k: str(v) for k, v in paths.items()}}


class _CsvLog:
    """Rows of loss terms and validation figures; columns grow as new keys appear."""

    def __init__(self, path: Path, append: bool, enabled: bool = True):
        self.path, self.enabled = path, enabled
        self.rows: List[dict] = list(csv.DictReader(path.open())) if append and path.exists() else []

    def trim(self, step: int) -> None:
        self.rows = [r for r in self.rows if int(r["step"]) <= step]

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, columns)
            writer.writeheader()
            writer.writerows(self.rows)


def _plot(csv_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(csv_path.open()))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for axis, keys, style in ((top, ("loss", "focal", "dice", "iou_mse", "prototype"), {"linewidth": 0.8}),
                              (bottom, ("miou", "single_click_share", "merge_rate", "area_vs_base"), {"marker": "o"})):
        for key in keys:
            pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
            if pts:
                axis.plot(*zip(*pts), label=key, **style)
        if axis.lines:
            axis.legend(fontsize=7)
    top.set_ylabel("training loss")
    bottom.set_xlabel("step")
    bottom.set_ylabel("validation")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
