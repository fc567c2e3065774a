"""Does ``pointsam train`` help on imagery the base model has not seen? The ablation of the PointSAM method.

Target domain: generated buildings scenes as the bundled model never saw them in training: 0.5 m pixels
instead of 0.3 m (smaller houses, more of them per chip), and another sensor's look (washed-out colours, a
dusty haze, a warm cast and blur). Training scenes give only their
clicks; held-out test scenes, with other seeds, give the truth. Every variant trains with the same budget
(steps, seed, LoRA rank) and is scored on the same test scenes with the engine's ``segment`` + ``evaluate``:

    zero-shot | plain self-training | + calibration | + prototypes | PointSAM (both) | mask-supervised LoRA

    .venv/bin/python benchmarks/domain_shift.py [--steps 300] [--train-scenes 4] [--test-scenes 3] [--device auto]

Prints one table (mIoU, F1, merges, minutes) and writes it as JSON and Markdown under ``benchmarks/out``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

OUT = Path(__file__).resolve().parent / "out" / "domain_shift"
HAZE = np.array([205.0, 185.0, 150.0])


def shift_style(image: np.ndarray) -> np.ndarray:
    """(3, H, W) uint8 buildings image -> the target style: desaturated, haze, colour cast, blur."""
    x = image.astype(float)
    x = 0.35 * x + 0.65 * x.mean(axis=0, keepdims=True)
    x = 0.6 * x + 0.4 * HAZE[:, None, None]
    x = x * np.array([1.08, 1.0, 0.85])[:, None, None]
    x = ndimage.gaussian_filter(x, (0, 1.0, 1.0))
    return np.clip(x, 0, 255).astype(np.uint8)


def make_scenes(folder: Path, seeds, size: int, resolution: float) -> list:
    from pointsam_engine.scenes import render, write_scene

    out = []
    for seed in seeds:
        scene = render("buildings", size, seed=seed, resolution=resolution)
        scene.image = shift_style(scene.image)
        out.append(write_scene(scene, folder, f"target_{seed}"))
    return out


def score(test, model: str, adapter=None) -> dict:
    import pyogrio

    from pointsam_engine.evaluate import Grid, score_image, summarize
    from pointsam_engine.pipeline import segment

    scores = []
    for files in test:
        result = segment(files["raster"], files["points"], None, model=model, adapter=adapter)
        truth = pyogrio.read_dataframe(files["truth"])
        points = pyogrio.read_dataframe(files["points"], fid_as_index=True)
        scores.append(score_image(result.layers["instances"], truth, Grid.from_raster(files["raster"]), points))
    figures = summarize(scores)
    return {k: figures[k] for k in ("miou", "mf1", "merges")}


VARIANTS = {
    "plain self-training": dict(calibration=False, prototypes=False),
    "+ calibration": dict(calibration=True, prototypes=False),
    "+ prototypes": dict(calibration=False, prototypes=True),
    "PointSAM (both)": dict(calibration=True, prototypes=True),
    "mask-supervised LoRA (upper bound)": dict(calibration=False, prototypes=False, supervised=True, strong=False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--train-scenes", type=int, default=4)
    parser.add_argument("--test-scenes", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--resolution", type=float, default=0.5, help="Target pixel size in metres (training: 0.3)")
    parser.add_argument("--model", default="pointsam-tiny")
    parser.add_argument("--device", default="auto", help="Lightning Fabric accelerator: cpu, gpu or auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from training.selftrain import SelfTrainOptions
    from training.train import TrainConfig, train

    OUT.mkdir(parents=True, exist_ok=True)
    train_scenes = make_scenes(OUT / "train", [60001 + i for i in range(args.train_scenes)], args.size,
                               args.resolution)
    test_scenes = make_scenes(OUT / "test", [61001 + i for i in range(args.test_scenes)], args.size,
                              args.resolution)
    rows = {"zero-shot": {**score(test_scenes, args.model), "minutes": 0.0}}
    print(f"zero-shot: {rows['zero-shot']}")
    base = TrainConfig(rasters=[str(f["raster"]) for f in train_scenes], points=[str(f["points"]) for f in train_scenes],
                       output="", model=args.model, steps=args.steps, seed=args.seed, val_fraction=0.0,
                       checkpoint_every=args.steps, accelerator=args.device, overwrite=True,
                       train_masks=[str(f["truth"]) for f in train_scenes])
    for name, options in VARIANTS.items():
        adapter = OUT / (name.split(" (")[0].replace(" ", "_").replace("+_", "plus_") + ".adapter.pt")
        cfg = replace(base, output=str(adapter), selftrain=SelfTrainOptions(**options))
        start = time.time()
        train(cfg, echo=lambda _: None)
        rows[name] = {**score(test_scenes, args.model, str(adapter)), "minutes": (time.time() - start) / 60}
        print(f"{name}: {rows[name]}")
    table = ["| variant | mIoU | F1 | merges | training minutes |", "|---|---|---|---|---|"]
    table += [f"| {k} | {v['miou']:.3f} | {v['mf1']:.3f} | {v['merges']} | {v['minutes']:.1f} |" for k, v in rows.items()]
    print("\n".join(table))
    (OUT / "domain_shift.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    (OUT / "domain_shift.md").write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
