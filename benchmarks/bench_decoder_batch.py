"""How many prompts to decode together: milliseconds per prompt for each batch size, side by side, in one run.

A segment run decodes a chip's prompts a batch at a time (``ChipPredictor.decoder_batch``; by default
:func:`pointsam_engine.sam.decode.decoder_batch_for` sizes it by the model). For the bundled model and for a
full-size SAM (``vit_b``, random weights in the official layout, as ``bench_encoder.py``), on a generated
buildings scene of the model's chip size encoded once, this prints the time per prompt of
``ChipPredictor.predict`` (decoder and upsampling) at each batch size and at the default, for single clicks on
the scene's buildings (SAM's three outputs) and for prompts of such a click and eight negatives on the chip (a
calibrated prompt). Best of ``--rounds`` rounds of about ``--prompts`` prompts, a whole number of batches.

    .venv/bin/python benchmarks/bench_decoder_batch.py [--batches 1,2,4,8,16,32] [--prompts 32] [--rounds 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def per_prompt_ms(predictor, prompts, rounds: int) -> float:
    """Best of ``rounds`` timings of decoding ``prompts``, in milliseconds per prompt."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        predictor.predict(prompts)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,2,4,8,16,32")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    import torch
    from bench_encoder import _checkpoint

    from pointsam_engine.demo.scenes import render
    from pointsam_engine.masks import Prompt
    from pointsam_engine.sam.cache import EmbeddingCache
    from pointsam_engine.sam.decode import decoder_batch_for
    from pointsam_engine.sam.model import DEFAULT_MODEL, load_model, resolve_model_path
    from pointsam_engine.sam.predict import ChipPredictor

    layouts = ("single click", "1 click + 8 negatives")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, about {args.prompts} prompts, "
          f"best of {args.rounds}")
    print("| model | batch | ms per prompt: " + " | ".join(layouts) + " |")
    print("|---|---|" + "---|" * len(layouts))
    for name, path in (("bundled", resolve_model_path(DEFAULT_MODEL)), ("vit_b (random)", _checkpoint("vit_b"))):
        model = load_model(str(path), device="cpu")
        size = model.image_size
        scene = render("buildings", size=size, seed=0)
        rng = np.random.default_rng(0)
        default = decoder_batch_for(model.sam)
        predictor = ChipPredictor(model, EmbeddingCache(0))
        predictor.set_chip(np.ascontiguousarray(scene.image.transpose(1, 2, 0)))
        for batch in sorted({int(b) for b in args.batches.split(",")} | {default}):
            clicks = scene.clicks[np.arange(batch * max(1, round(args.prompts / batch))) % len(scene.clicks)]
            prompts = ([Prompt(c[None], np.array([1])) for c in clicks],
                       [Prompt(np.vstack([c, rng.uniform(0, size, (8, 2))]), np.array([1] + [0] * 8)) for c in clicks])
            predictor.decoder_batch = batch
            per_layout = [per_prompt_ms(predictor, ps, args.rounds) for ps in prompts]
            label = f"{batch} (default)" if batch == default else str(batch)
            print(f"| {name} | {label} | " + " | ".join(f"{ms:.1f}" for ms in per_layout) + " |", flush=True)


if __name__ == "__main__":
    main()
