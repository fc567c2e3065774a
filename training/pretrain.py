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
from itertools import groupby
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pointsam_engine.model import SamArch, build_sam, file_sha256, pick_device, save_pointsam_checkpoint

from .data import Sample, ScenePool
from .losses import dice_loss, focal_loss, mask_iou

POINTSAM_TINY = SamArch(encoder_embed_dim=128, encoder_depth=6, encoder_num_heads=4, encoder_global_attn_indexes=(2, 5),
                        image_size=256, patch_size=8, window_size=8, prompt_embed_dim=128, decoder_depth=2,
                        decoder_mlp_dim=512, decoder_num_heads=4, iou_head_hidden_dim=128)


@dataclass
class PretrainConfig:
    output: str = "pointsam_engine/models/pointsam-tiny.pt"
    steps: int = 4000
    images_per_step: int = 2
    objects_per_image: int = 8
    lr: float = 6e-4
    warmup: int = 200
    weight_decay: float = 0.05
    scenes_per_kind: int = 24
    scene_size: int = 640
    seed: int = 0
    device: str = "auto"
    log_every: int = 50


def _lr_factor(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def sample_loss(sam, sample: Sample, device) -> tuple:
    """Loss of one chip (mean over its objects) and the mean IoU of the kept masks."""
    x = torch.from_numpy(sample.image).permute(2, 0, 1).float()[None].to(device)
    embedding = sam.image_encoder(sam.preprocess(x))
    dense_pe = sam.prompt_encoder.get_dense_pe()
    target = torch.from_numpy(sample.masks).float().to(device)
    losses, ious = [], []
    order = sorted(range(len(sample.points)), key=lambda i: len(sample.points[i]))
    for n, group in groupby(order, key=lambda i: len(sample.points[i])):
        group = list(group)
        coords = torch.as_tensor(np.stack([sample.points[i] for i in group]) - 0.5, dtype=torch.float32, device=device)
        labels = torch.as_tensor(np.stack([sample.labels[i] for i in group]), dtype=torch.int, device=device)
        sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        low, iou_pred = sam.mask_decoder.predict_masks(embedding, dense_pe, sparse, dense)
        logits = low  # losses at the decoder's own resolution, against area-pooled truth (much cheaper)
        single = n == 1 and bool((labels == 1).all())
        keep = slice(1, 4) if single else slice(0, 1)  # what the engine reads for this kind of prompt
        cand, pred_iou = logits[:, keep], iou_pred[:, keep]
        t = F.adaptive_avg_pool2d(target[group][:, None], low.shape[-2:]).expand_as(cand)
        per_mask = 20 * focal_loss(cand, t) + dice_loss(cand, t)
        actual = mask_iou(cand, t)
        best = per_mask.argmin(dim=1)
        losses.append(per_mask.gather(1, best[:, None]).squeeze(1) + F.mse_loss(pred_iou, actual, reduction="none").mean(1))
        ious.append(actual.gather(1, pred_iou.argmax(dim=1, keepdim=True)).squeeze(1))
    return torch.cat(losses).mean(), float(torch.cat(ious).mean())


def pretrain(cfg: PretrainConfig, echo: Callable[[str], None] = print) -> dict:
    """Train and save the model; returns the provenance written into the checkpoint."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = pick_device(cfg.device)
    start = time.time()
    echo(f"rendering {cfg.scenes_per_kind} scenes per kind ({cfg.scene_size} px) ...")
    pool = ScenePool(("buildings", "ships"), cfg.scenes_per_kind, cfg.scene_size, cfg.seed)
    sam = build_sam(POINTSAM_TINY).to(device).train()
    params = sum(p.numel() for p in sam.parameters())
    echo(f"pointsam-tiny: {params / 1e6:.2f} M parameters, device {device}, {torch.get_num_threads()} threads")
    optimizer = torch.optim.AdamW(sam.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg))
    log, running, running_iou = [], [], []
    for step in range(cfg.steps):
        optimizer.zero_grad(set_to_none=True)
        for _ in range(cfg.images_per_step):
            loss, iou = sample_loss(sam, pool.sample(rng, POINTSAM_TINY.image_size, cfg.objects_per_image), device)
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
    provenance = {
        "trained_by": "training/pretrain.py (pointsam pretrain)",
        "config": asdict(cfg),
        "parameters": params,
        "wall_minutes": round((time.time() - start) / 60, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, device {device}",
        "data": "generated scenes (pointsam_engine.scenes): buildings 0.3 m RGB and ships 1.5 m SAR amplitude "
                "(linear and dB stretch), seeds below 10000",
        "log": log,
    }
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_pointsam_checkpoint(sam.eval().cpu(), POINTSAM_TINY, output, name="pointsam-tiny", provenance=provenance)
    echo(f"saved {output} ({output.stat().st_size / 1e6:.1f} MB, sha256 {file_sha256(output)[:12]})")
    return provenance
