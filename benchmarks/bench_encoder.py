"""SAM's image encoder on one 1024² chip: the stock attention vs ``pointsam_engine.encoder.LeanAttention``.

Each variant runs in its own fresh process (so peak RSS is its own): load the full-size vit_b (random
weights, official layout), encode the same chip ``--passes`` times, report seconds per pass and peak RSS,
and check that both give the same embedding up to float rounding.

    .venv/bin/python benchmarks/bench_encoder.py [--passes 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def _peak_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def _run(variant: str, passes: int, queue) -> None:
    import numpy as np
    import torch
    from segment_anything.modeling.image_encoder import Attention

    from pointsam_engine.encoder import LeanAttention
    from pointsam_engine.model import OFFICIAL_ARCHS, build_sam, load_model

    ckpt = OUT / "sam_vit_b_01ec64.pth"
    if not ckpt.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(build_sam(OFFICIAL_ARCHS["vit_b"]).state_dict(), ckpt)
    sam = load_model(str(ckpt), device="cpu").sam
    if variant == "stock":
        for module in sam.modules():
            if type(module) is LeanAttention:
                module.__class__ = Attention
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, 1024, 1024)).astype(np.float32))
    x = sam.preprocess(image[None])
    seconds = []
    with torch.inference_mode():
        for _ in range(passes):
            start = time.perf_counter()
            embedding = sam.image_encoder(x)
            seconds.append(time.perf_counter() - start)
    queue.put({"variant": variant, "seconds": seconds, "peak_mb": _peak_mb(), "embedding": embedding.numpy()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    results = {}
    for variant in ("stock", "lean"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_run, args=(variant, args.passes, queue))
        proc.start()
        results[variant] = queue.get()
        proc.join()
    import numpy as np

    diff = float(np.abs(results["stock"]["embedding"] - results["lean"]["embedding"]).max())
    print("| vit_b encoder, one 1024² chip, CPU | stock attention | lean attention |")
    print("|---|---|---|")
    print(f"| seconds per pass | {np.mean(results['stock']['seconds']):.1f} | {np.mean(results['lean']['seconds']):.1f} |")
    print(f"| peak RSS of the process (MB) | {results['stock']['peak_mb']:,.0f} | {results['lean']['peak_mb']:,.0f} |")
    print(f"max abs difference of the embeddings: {diff:.2e}")


if __name__ == "__main__":
    main()
