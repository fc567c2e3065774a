"""Seconds per ``pointsam train`` step: PointSAM as published (no anchor) beside the anchored default.

The anchor (``training.selftrain``, ``--anchor-weight``) adds one encoder pass without gradient (the base
model's masks) and a second loss on the student's decoding. This prints what that costs, per step, with the
same chips, views and prompts in both columns (same seed). ``--model vit_b`` times the full-size
architecture (random weights in the official layout, built once by ``bench_segment.ensure_model``) on
1024² chips, where the encoder is most of a step.

    .venv/bin/python benchmarks/bench_selftrain_step.py [--model pointsam-tiny|vit_b] [--steps 30]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_segment import ensure_model

OUT = Path(__file__).resolve().parent / "out"


def seconds_per_step(model: str, anchor_weight: float, steps: int, scene: dict, chip_size: int) -> float:
    from pointsam_engine.config import SegmentConfig
    from pointsam_engine.sam.lora import add_lora
    from pointsam_engine.sam.model import load_model
    from training.regions import load_region
    from training.selftrain import SelfTrainOptions, selftrain_step

    sam = load_model(model, device="cpu").sam
    add_lora(sam)
    region = load_region(0, scene["raster"], scene["points"], SegmentConfig(), chip_size, val_fraction=0.0,
                         rng=np.random.default_rng(0))
    chips = [c for c in region.chips if len(c.owned)]
    opts, rng = SelfTrainOptions(prototypes=False, anchor_weight=anchor_weight), np.random.default_rng(0)
    selftrain_step(sam, chips[0], opts, rng).loss.backward()  # warm-up, not timed
    start = time.perf_counter()
    for k in range(steps):
        selftrain_step(sam, chips[k % len(chips)], opts, rng).loss.backward()
    return (time.perf_counter() - start) / steps


def main() -> None:
    from pointsam_engine.demo.scenes import render, write_scene
    from pointsam_engine.sam.model import DEFAULT_MODEL
    from training.selftrain import SelfTrainOptions

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="pointsam-tiny (default) or vit_b")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    model, chip_size = args.model, 256
    if model == "vit_b":
        OUT.mkdir(parents=True, exist_ok=True)
        model, chip_size = str(ensure_model(OUT, "vit_b")), 1024
    with tempfile.TemporaryDirectory() as folder:
        scene = write_scene(render("buildings", 2 * chip_size, seed=63001, density=1.6), folder, "scene")
        published = seconds_per_step(model, 0.0, args.steps, scene, chip_size)
        anchored = seconds_per_step(model, SelfTrainOptions.anchor_weight, args.steps, scene, chip_size)
    import torch

    print(f"| model | no anchor (PointSAM as published) | anchored (default) | anchor's cost |\n|---|---|---|---|\n"
          f"| {args.model}, {chip_size}² chips | {published:.3f} s/step | {anchored:.3f} s/step "
          f"| +{100 * (anchored / published - 1):.0f} % |")
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.steps} timed steps after one warm-up")


if __name__ == "__main__":
    main()
