"""Pre-train ``pointsam-tiny`` from scratch on generated scenes: SAM's architecture at reduced size,
supervised with the scenes' truth masks and click prompts (the bundled model of the engine).

One step: a 256-px chip of a buildings or ships scene, up to 16 objects, each prompted with a click
(sometimes a second click, sometimes its touching neighbours' clicks as negatives, as calibration
sends them); loss = 20 * focal + Dice on the best of SAM's three masks for a single click (the mask
the engine keeps), or on the single mask otherwise, + MSE of the IoU head.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pointsam_engine.errors import ModelError, OptionError
from pointsam_engine.masks import Prompt
from pointsam_engine.output import atomic_path
from pointsam_engine.sam.decode import decode_groups, embed
from pointsam_engine.sam.model import SamArch, build_sam, file_sha256, load_model, pick_device, save_pointsam_checkpoint

from .data import Sample, ScenePool
from .deepen import deepen
from .objective import mask_terms
from .realdata import REAL_DATA, training_pool

POINTSAM_TINY = SamArch(encoder_embed_dim=128, encoder_depth=6, encoder_num_heads=4, encoder_global_attn_indexes=(2, 5),
                        image_size=256, patch_size=8, window_size=8, prompt_embed_dim=128, decoder_depth=2,
                        decoder_mlp_dim=512, decoder_num_heads=4, iou_head_hidden_dim=128)


@dataclass
class PretrainConfig:
    output: str = "pointsam_engine/models/pointsam-tiny.pt"
    steps: int = 4000
    images_per_step: int = 2
    objects_per_image: int = 12
    lr: float = 6e-4
    warmup: int = 200
    weight_decay: float = 0.05
    scenes_per_kind: int = 24
    scene_size: int = 640
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    save_every: int = 500  # a usable checkpoint at the output path every this many steps
    init: str = ""  # continue from this model file instead of random weights
    kind_share: dict | None = None  # e.g. {"ships": 0.7, "buildings": 0.3}; None: every rendered image alike
    focal_alpha: float = 0.25
    dense_share: float = 0.0  # share of buildings scenes drawn dense, with terraces (training.data.DENSE)
    real_share: float = 0.0  # share of chips cropped from real labelled imagery (training.realdata.training_pool)
    real_zoom: tuple = (0.5, 1.8)  # real chips are resampled by a factor in this range (log-uniform)
    encoder_depth: int = 0  # with init: deepen its encoder to this many blocks first (training.deepen); 0 keeps it


def _lr_factor(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def sample_loss(sam, sample: Sample, device, focal_alpha: float = 0.25) -> tuple:
    """Loss of one chip (mean over its objects) and the mean IoU of the masks the engine would keep."""
    embedding = embed(sam, sample.image)
    prompts = [Prompt(points, labels) for points, labels in zip(sample.points, sample.labels)]
    terms = mask_terms(decode_groups(sam, embedding, prompts), torch.from_numpy(sample.masks).to(device),
                       focal_alpha=focal_alpha)
    return terms.total().mean(), float(terms.iou.mean())


def pretrain(cfg: PretrainConfig, echo: Callable[[str], None] = print) -> dict:
    """Train and save the model; returns the provenance written into the checkpoint."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = pick_device(cfg.device)
    start = time.time()
    sam, arch, earlier = _starting_model(cfg)
    sam, arch, deepened = _deepened(sam, arch, cfg, echo)
    if earlier:
        echo(f"continuing from {cfg.init}")
    echo(f"rendering {cfg.scenes_per_kind} scenes per kind ({cfg.scene_size} px) ...")
    pool = ScenePool(("buildings", "ships"), cfg.scenes_per_kind, cfg.scene_size, cfg.seed, cfg.dense_share)
    real = training_pool(zoom=tuple(cfg.real_zoom)) if cfg.real_share > 0 else None
    sam = sam.to(device).train()
    params = sum(p.numel() for p in sam.parameters())
    echo(f"pointsam-tiny: {params / 1e6:.2f} M parameters, device {device}, {torch.get_num_threads()} threads")
    optimizer = torch.optim.AdamW(sam.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg))
    log, running, running_iou = [], [], []
    for step in range(cfg.steps):
        optimizer.zero_grad(set_to_none=True)
        for _ in range(cfg.images_per_step):
            if real is not None and rng.random() < cfg.real_share:
                sample = real.sample(rng, arch.image_size, cfg.objects_per_image)
            else:
                sample = pool.sample(rng, arch.image_size, cfg.objects_per_image, cfg.kind_share)
            loss, iou = sample_loss(sam, sample, device, cfg.focal_alpha)
            (loss / cfg.images_per_step).backward()
            running.append(float(loss.detach()))
            running_iou.append(iou)
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            entry = {"step": step + 1, "loss": float(np.mean(running)), "train_iou": float(np.mean(running_iou)),
                     "lr": schedule.get_last_lr()[0], "minutes": (time.time() - start) / 60}
            log.append(entry)
            echo("step {step:5d}  loss {loss:.4f}  train IoU {train_iou:.3f}  lr {lr:.2e}  {minutes:.1f} min".format(**entry))
            running, running_iou = [], []
        if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            _save(sam, arch, cfg, _provenance(cfg, params, start, device, log, earlier, deepened))
            sam.train()
    provenance = _provenance(cfg, params, start, device, log, earlier, deepened)
    output = _save(sam, arch, cfg, provenance)
    echo(f"saved {output} ({output.stat().st_size / 1e6:.1f} MB, sha256 {file_sha256(output)[:12]})")
    return provenance


def _starting_model(cfg: PretrainConfig) -> tuple:
    """pointsam-tiny with random weights, or the ``init`` model (its own architecture) and its record."""
    if not cfg.init:
        return build_sam(POINTSAM_TINY), POINTSAM_TINY, None
    loaded = load_model(cfg.init, device="cpu")  # the engine's reading and checks of a model file
    if loaded.model_type != "pointsam":
        raise ModelError(f"--init {cfg.init} is not a PointSAM model file; pointsam pretrain continues the models "
                         "it wrote (pointsam-tiny and its stages)")
    # the plain modules pretrain trains from scratch too, not the engine's inference attention
    sam = build_sam(loaded.arch, loaded.sam.pixel_mean.flatten().tolist(), loaded.sam.pixel_std.flatten().tolist())
    sam.load_state_dict(loaded.sam.state_dict())
    return sam, loaded.arch, {"file": Path(cfg.init).name, "sha256": loaded.sha256, "provenance": loaded.provenance}


def _deepened(sam, arch: SamArch, cfg: PretrainConfig, echo: Callable[[str], None]) -> tuple:
    """The model with ``cfg.encoder_depth`` encoder blocks (:func:`training.deepen.deepen`) and the record of it."""
    if cfg.encoder_depth and not cfg.init:
        raise OptionError("--encoder-depth deepens the model given with --init; give --init too")
    if not cfg.encoder_depth or cfg.encoder_depth == arch.encoder_depth:
        return sam, arch, None
    try:
        deep, deep_arch = deepen(sam, arch, cfg.encoder_depth)
    except ValueError as exc:
        raise OptionError(f"--encoder-depth {cfg.encoder_depth}: {exc}; choose more than {arch.encoder_depth}, "
                          "or 0 to keep its depth") from None
    echo(f"encoder deepened from {arch.encoder_depth} to {cfg.encoder_depth} blocks")
    return deep, deep_arch, {"from": arch.encoder_depth, "to": cfg.encoder_depth}


def machine(device=None) -> str:
    """The provenance's machine line: architecture, cores, torch and the device trained on."""
    line = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    return f"{line}, device {device}" if device is not None else line


def _provenance(cfg: PretrainConfig, params: int, start: float, device, log: list, earlier=None,
                deepened=None) -> dict:
    return {
        "continued_from": earlier,
        "deepened": deepened,
        "trained_by": "training/pretrain.py (pointsam pretrain)",
        "config": asdict(cfg),
        "parameters": params,
        "wall_minutes": round((time.time() - start) / 60, 1),
        "machine": machine(device),
        "data": "generated scenes (pointsam_engine.demo.scenes): buildings 0.3 m RGB and ships 1.5 m SAR amplitude "
                "(linear and dB stretch), seeds below 10000" + (f"; {REAL_DATA}" if cfg.real_share else ""),
        "log": list(log),
    }


def _save(sam, arch: SamArch, cfg: PretrainConfig, provenance: dict) -> Path:
    """Write atomically, so an interrupted run leaves the last complete checkpoint."""
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in sam.state_dict().items()}
    cpu_sam = build_sam(arch, sam.pixel_mean.flatten().tolist(), sam.pixel_std.flatten().tolist())
    cpu_sam.load_state_dict(state)
    with atomic_path(output) as tmp:
        save_pointsam_checkpoint(cpu_sam.eval(), arch, tmp, name="pointsam-tiny", provenance=provenance)
    return output
