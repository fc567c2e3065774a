"""``pointsam train``: adapt a SAM to a region from its point layers alone (the PointSAM method).

The base model stays frozen; LoRA adapters on the image encoder's q and v projections learn from
self-training on the region's chips (:mod:`training.selftrain`), regularised by prototypes
(:mod:`training.prototypes`) and anchored to the base model's masks against drift. Lightning Fabric
carries device, precision and strategy, so the same loop runs on this CPU and on several GPUs
(``--accelerator gpu --devices 4 --strategy ddp``).

Nothing is lost: a checkpoint (:mod:`training.checkpoint`) is written atomically every
``checkpoint_every`` steps and on Ctrl-C or cancel, and ``resume`` continues to the same result as an
uninterrupted run. The adapter file keeps the weights that scored best on the validation blocks; there is
no test set in the loop. Every loss term and validation figure goes to ``<output>.csv`` and a plot of them
to ``<output>.png`` (:mod:`training.log`), among them ``area_vs_base``: how much the held-out masks have
grown against the base model's, the form self-training's drift takes (docs/accuracy.md).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from pointsam_engine.errors import Cancelled, OptionError, PointsError
from pointsam_engine.masks import Prompt
from pointsam_engine.sam.adapter import save_adapter
from pointsam_engine.sam.decode import embed
from pointsam_engine.sam.lora import add_lora
from pointsam_engine.sam.model import LoadedModel, load_model

from .checkpoint import LoopState, load_trained_weights, restore_checkpoint, save_checkpoint, trained_weights
from .config import RunFiles, TrainConfig, check_inputs
from .log import CsvLog, plot
from .prototypes import PrototypeRegularizer, instance_features, target_prototypes
from .regions import Region, TrainingChip, load_region
from .selftrain import kept_masks, selftrain_step
from .validation import area_growth, validate


def train(cfg: TrainConfig, echo: Callable[[str], None] = print, progress: Optional[Callable[[float, str], None]] = None,
          cancel: Optional[threading.Event] = None) -> dict:
    """Train an adapter; returns the summary (best validation, steps, seconds and the files written).

    ``progress(fraction, stage)`` is called after every step; setting ``cancel`` stops the run at the
    next step with a checkpoint saved (``resume`` continues it) and raises :class:`Cancelled`.
    """
    check_inputs(cfg)
    fabric = _start_fabric(cfg)
    run = _set_up(cfg, fabric, echo if fabric.is_global_zero else _silent)
    state = run.state
    if state.step == 0 and cfg.val_fraction > 0:
        _validate(run)
    start = time.time()
    with _progress_bar(cfg, state.step, fabric) as bar:
        try:
            while state.step < cfg.steps:
                if cancel is not None and cancel.is_set():
                    _checkpoint(run)
                    raise Cancelled(f"training cancelled at step {state.step}; no adapter written, "
                                    f"resume from {run.files.checkpoint} with resume")
                loss = _step(run)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
                if progress is not None:
                    progress(state.step / cfg.steps, f"step {state.step}/{cfg.steps}")
                if cfg.val_fraction > 0 and _due(state.step, cfg.val_every, cfg.steps):
                    _validate(run)
                if _due(state.step, cfg.checkpoint_every, cfg.steps):
                    _checkpoint(run)
        except KeyboardInterrupt:
            _checkpoint(run)
            raise
    if run.lead and hasattr(cancel, "commit"):  # an API job: a cancel is honoured until the adapter is written
        cancel.commit()
    summary = _finish(run, time.time() - start) if run.lead else {}
    fabric.barrier()
    return summary


class _Step(nn.Module):
    """One self-training step as a module's forward, so distributed strategies see a forward pass."""

    def __init__(self, sam):
        super().__init__()
        self.sam = sam

    def forward(self, chip, opts, rng, regularizer):
        result = selftrain_step(self.sam, chip, opts, rng, regularizer)
        return result.loss, result.terms, result.teacher_features


@dataclass
class _Run:
    """What a run is made of once set up; :func:`train` steps it."""

    cfg: TrainConfig
    files: RunFiles
    fabric: Any
    echo: Callable[[str], None]
    model: LoadedModel
    regions: List[Region]
    chips: List[TrainingChip]
    step_module: nn.Module
    optimizer: Any
    schedule: Any
    regularizer: Optional[PrototypeRegularizer]
    state: LoopState
    rng: np.random.Generator
    log: CsvLog

    @property
    def lead(self) -> bool:
        """With several devices, one process validates and writes every file."""
        return self.fabric.is_global_zero


def _start_fabric(cfg: TrainConfig):
    from lightning_fabric import Fabric

    try:
        fabric = Fabric(accelerator=cfg.accelerator, devices=cfg.devices, strategy=cfg.strategy, precision=cfg.precision)
    except Exception as exc:  # Lightning's MisconfigurationException, ValueError, RuntimeError: no such device here
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise OptionError(f"--accelerator {cfg.accelerator} --devices {cfg.devices} --strategy {cfg.strategy} "
                          f"--precision {cfg.precision} cannot run here ({first}); use --accelerator cpu --devices 1, "
                          "or the devices this machine has") from None
    fabric.launch()
    return fabric


def _set_up(cfg: TrainConfig, fabric, echo: Callable[[str], None]) -> _Run:
    """Model, regions, optimizer and loop state: fresh, or restored from the checkpoint with ``resume``."""
    files = cfg.files()
    shared = np.random.default_rng(cfg.seed)  # the same split and target prototypes in every process
    # one stream when one process trains; with several, each samples its own chips and views
    rng = shared if fabric.world_size == 1 else np.random.default_rng([cfg.seed, fabric.global_rank])
    torch.manual_seed(cfg.seed)
    model = load_model(cfg.model, device="cpu")
    optimizer, schedule = _trainable(model.sam, cfg)  # before the data: blocks the encoder lacks are refused at once
    regions = _load_regions(cfg, model.image_size, shared, echo)
    chips = [c for r in regions for c in r.chips if len(c.owned)]
    if not chips:
        raise PointsError("every click fell into the validation blocks; lower --val-fraction or give more clicks")
    step_module, optimizer = fabric.setup(_Step(model.sam), optimizer)
    model = dataclasses.replace(model, device=str(fabric.device))
    if cfg.resume:
        state, regularizer = restore_checkpoint(files.checkpoint, model.sam, optimizer, schedule, cfg.train_decoder)
        rng.bit_generator.state = state.rng
        echo(f"resuming at step {state.step} from {files.checkpoint}")
    else:
        regularizer = None
        if cfg.selftrain.prototypes:
            regularizer = PrototypeRegularizer(_targets(model.sam, chips, cfg, shared), cfg.bank_size, cfg.match_interval)
        state = LoopState(rng=rng.bit_generator.state)  # after the target prototypes, which may draw from it
    fabric.seed_everything(cfg.seed, verbose=False)
    log = CsvLog(files.csv, append=cfg.resume, enabled=fabric.is_global_zero)
    log.trim(state.step)  # rows written after the checkpoint that is resumed are redone
    return _Run(cfg=cfg, files=files, fabric=fabric, echo=echo, model=model, regions=regions, chips=chips,
                step_module=step_module, optimizer=optimizer, schedule=schedule, regularizer=regularizer, state=state,
                rng=rng, log=log)


def _trainable(sam: nn.Module, cfg: TrainConfig) -> Tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """LoRA adapters added to ``sam`` (and its decoder unfrozen with ``train_decoder``); Adam with a linear warm-up."""
    try:
        add_lora(sam, rank=cfg.rank, blocks=cfg.blocks)
    except OptionError as exc:
        if cfg.blocks is None:
            raise
        raise OptionError(f"--blocks: {exc}; give blocks in that range") from None
    if cfg.train_decoder:
        sam.mask_decoder.requires_grad_(True)
    optimizer = torch.optim.Adam([p for p in sam.parameters() if p.requires_grad], lr=cfg.lr,
                                 weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)))
    return optimizer, schedule


def _step(run: _Run) -> float:
    """One self-training step on a random chip; its loss."""
    state = run.state
    chip = run.chips[int(run.rng.integers(len(run.chips)))]
    run.model.sam.train()
    loss, terms, teacher_features = run.step_module(chip, run.cfg.selftrain, run.rng, run.regularizer)
    run.optimizer.zero_grad(set_to_none=True)
    run.fabric.backward(loss)
    run.optimizer.step()
    run.schedule.step()
    state.step += 1
    state.rng = run.rng.bit_generator.state  # where the next step starts: a checkpoint before it resumes exactly
    if run.regularizer is not None and teacher_features is not None:
        run.regularizer.update(state.step, teacher_features)
    run.log.write({"step": state.step, "lr": run.schedule.get_last_lr()[0], **terms})
    return terms["loss"]


def _due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


def _validate(run: _Run) -> None:
    """Score the held-out blocks (the lead process); keep the weights when they score best so far."""
    if run.lead:
        _score(run)
    run.fabric.barrier()


def _score(run: _Run) -> None:
    state = run.state
    run.model.sam.eval()
    figures, areas = validate(run.model, run.regions, run.cfg.segment, run.cfg.val_polygons or None)
    if state.step == 0:  # LoRA's B is zero: these are the base model's masks
        state.base_areas = areas
    figures["area_vs_base"] = area_growth(areas, state.base_areas)
    score = figures.get("miou", figures["single_click_share"])  # area_vs_base informs; it does not choose
    entry = {"step": state.step, **figures}
    state.history.append(entry)
    run.log.write(entry)
    if not math.isnan(score) and (state.best is None or score > state.best["score"]):
        state.best = {"step": state.step, "score": score, **figures}
        state.best_lora = trained_weights(run.model.sam, run.cfg.train_decoder)
    shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
    run.echo(f"validation at step {state.step}: {shown}")


def _checkpoint(run: _Run) -> None:
    if run.lead:
        save_checkpoint(run.files.checkpoint, run.state, run.model.sam, run.optimizer, run.schedule, run.regularizer,
                        run.cfg.train_decoder)


def _finish(run: _Run, seconds: float) -> dict:
    """Write the adapter with the best weights (the last ones when nothing was validated), and the plot."""
    cfg, state, files = run.cfg, run.state, run.files
    if state.best is not None:
        load_trained_weights(run.model.sam, state.best_lora)
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("segment", "selftrain")}
    config.update(segment=dataclasses.asdict(cfg.segment), selftrain=dataclasses.asdict(cfg.selftrain),
                  kept_step=state.best["step"] if state.best else state.step)
    save_adapter(run.model.sam, files.adapter, base=run.model, config=config, history=state.history,
                 normalization={r.raster: r.norm.to_dict() for r in run.regions}, decoder=cfg.train_decoder)
    plot(files.csv, files.plot)
    run.echo(f"adapter: {files.adapter} (weights of step {config['kept_step']}); log {files.csv}, plot {files.plot}")
    return {"best": state.best, "steps": state.step, "seconds": seconds, **{k: str(v) for k, v in files._asdict().items()}}


def _load_regions(cfg: TrainConfig, chip_size: int, rng: np.random.Generator, echo) -> List[Region]:
    regions = []
    for i, (raster, points) in enumerate(zip(cfg.rasters, cfg.points)):
        truth = cfg.train_masks[i] if cfg.selftrain.supervised else None
        region = load_region(i, raster, points, cfg.segment, chip_size, val_fraction=cfg.val_fraction, rng=rng,
                             truth=truth)
        echo(f"{raster}: {len(region.instances)} objects ({int(region.val.sum())} held out for validation), "
             f"{len(region.chips)} training chips")
        regions.append(region)
    return regions


def _targets(sam, chips: List[TrainingChip], cfg: TrainConfig, rng: np.random.Generator) -> torch.Tensor:
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


def _progress_bar(cfg: TrainConfig, done: int, fabric):
    from tqdm import tqdm

    return tqdm(total=cfg.steps, initial=done, desc="train", disable=fabric.global_rank > 0 or not sys.stderr.isatty())


def _silent(_line: str) -> None:
    """The echo of every process but the lead one."""
