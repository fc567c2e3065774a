"""SAM's image encoder on one 1024² chip: stock segment-anything fp32 against the engine in each precision.

For each model type, each variant runs in its own fresh process (so the peak RSS is its own): it loads
the same checkpoint (random weights in the official layout, written once to ``benchmarks/out``),
encodes the same chip ``--passes`` times after one warm-up pass (vit_l and vit_h: one timed pass, no
warm-up, unless ``--passes`` says otherwise) and reports seconds per pass (median), peak RSS and the
embedding's cosine similarity with stock segment-anything's.

- ``stock fp32``: ``segment_anything.sam_model_registry[...]`` as is, what samgeo and Geo-SAM run; for the SAM 2.1
  sizes (``hiera_t``, ``hiera_s``, ``hiera_b+``, ``hiera_l``; the ``sam2`` extra), ``SAM2ImagePredictor.set_image``
  on a model from ``sam2.build_sam.build_sam2`` (its timing includes its own resize and normalisation of the chip);
- ``engine fp32``: ``pointsam_engine.load_model(..., precision="fp32")`` (fused attention);
- ``engine bf16`` / ``int8`` / ``openvino`` (CPU; openvino for SAM's encoders only, its first call, the
  conversion into an empty cache, untimed, and run in a child process whose peak RSS is printed beside the
  variant's own) or ``fp16`` / ``bf16`` (GPU): the other precisions the device runs.

The fp32 floor is the encoder's FLOPs (counted by ``torch.utils.flop_counter`` on the meta device) over
the fp32 matmul throughput measured here (a 4096² matmul, best of several) just before the runs. A SAM 2.1
embedding is three tensors (the image embedding and two high-resolution maps): its cosine is over all three.

    .venv/bin/python benchmarks/bench_encoder.py [--models vit_b,vit_l,vit_h,hiera_t,hiera_s,hiera_b+,hiera_l]
        [--passes 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
ONE_PASS = ("vit_l", "vit_h")  # their default: one timed pass each


def _peak_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def _peak_text(result: dict) -> str:
    """The variant's peak RSS, and its child's (OpenVINO's conversion runs in one) where it had one."""
    child = result.get("child_peak_mb", 0.0)
    return f"{result['peak_mb']:,.0f}" + (f" (conversion, in a child process: {child:,.0f})" if child else "")


def _checkpoint(model_type: str) -> Path:
    """Random weights in the official layout, relative-position tables made non-zero (they start at zero)."""
    import torch

    from pointsam_engine.sam.model import OFFICIAL_ARCHS, build_sam
    from pointsam_engine.sam.sam2_backend import SAM2_ARCHS, build_sam2_model

    if model_type in SAM2_ARCHS:
        path = OUT / f"sam2.1_{model_type}_random.pt"
        if not path.exists():
            OUT.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(0)
            torch.save({"model": build_sam2_model(SAM2_ARCHS[model_type]).state_dict()}, path)
        return path

    path = OUT / f"sam_{model_type}_random.pth"
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        sam = build_sam(OFFICIAL_ARCHS[model_type])
        for name, p in sam.named_parameters():
            if "rel_pos" in name:
                p.data.normal_(0, 0.1)
        torch.save(sam.state_dict(), path)
    return path


def _chip(device: str):
    import numpy as np
    import torch

    image = np.random.default_rng(0).integers(0, 255, (3, 1024, 1024)).astype(np.float32)
    return torch.from_numpy(image)[None].to(device)


def _run(model_type: str, variant: str, device: str, passes: int, warmup: bool, queue) -> None:
    import torch

    path = _checkpoint(model_type)
    if variant == "stock fp32" and model_type.startswith("hiera"):
        queue.put(_run_stock_sam2(model_type, path, device, passes, warmup))
        return
    if variant == "stock fp32":
        from segment_anything import sam_model_registry

        sam = sam_model_registry[model_type](checkpoint=str(path)).eval().to(device)
        encode = sam.image_encoder
    else:
        from pointsam_engine.sam.model import load_model
        from pointsam_engine.sam.precision import encoder_runner

        if variant == "engine openvino":  # convert afresh, so the conversion's own peak is measured every run
            os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="bench-encoder-")
        loaded = load_model(str(path), device=device, precision=variant.split()[-1])
        sam = loaded.sam
        encode = encoder_runner(sam, loaded.precision, device)
    seconds = []
    with torch.inference_mode():
        x = sam.preprocess(_chip(device))
        warmup = warmup or variant == "engine openvino"  # its first call converts (then kept on disk): not a pass
        for i in range(passes + int(warmup)):
            start = time.perf_counter()
            embedding = encode(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= int(warmup):
                seconds.append(time.perf_counter() - start)
    # a numpy array travels by value (a tensor would travel as a handle the exiting child takes with it)
    converted = variant == "engine openvino"  # (other variants' children: multiprocessing's own helper)
    queue.put({"seconds": seconds, "peak_mb": _peak_mb(), "embedding": _flat(embedding),
               "child_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e6 if converted else 0.0})


def _flat(embedding):
    """An embedding (SAM's tensor, or SAM 2.1's tensors in ``SAM2ImagePredictor``'s order) as one numpy vector."""
    import torch

    parts = [embedding] if isinstance(embedding, torch.Tensor) else list(embedding)
    return torch.cat([t.float().cpu().flatten() for t in parts]).numpy()


def _run_stock_sam2(model_type: str, path: Path, device: str, passes: int, warmup: bool) -> dict:
    """``SAM2ImagePredictor.set_image`` on the same chip (as uint8 HWC), on a model built by ``sam2`` itself."""
    import torch
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from pointsam_engine.sam.sam2_backend import SAM2_ARCHS

    predictor = SAM2ImagePredictor(build_sam2(SAM2_ARCHS[model_type].config, str(path), device=device))
    image = _chip("cpu")[0].permute(1, 2, 0).numpy().astype("uint8")
    seconds = []
    with torch.inference_mode():
        for i in range(passes + int(warmup)):
            start = time.perf_counter()
            predictor.set_image(image)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= int(warmup):
                seconds.append(time.perf_counter() - start)
    features = predictor._features
    return {"seconds": seconds, "peak_mb": _peak_mb(),
            "embedding": _flat([features["image_embed"], *features["high_res_feats"]])}


def encoder_gflop(model_type: str) -> float:
    """FLOPs of one 1024² encoder pass (a multiply-add counts 2), counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pointsam_engine.sam.encoder import use_fused_attention
    from pointsam_engine.sam.model import OFFICIAL_ARCHS, build_sam
    from pointsam_engine.sam.sam2_backend import SAM2_ARCHS, build_sam2_model

    if model_type in SAM2_ARCHS:  # hiera cannot be built on the meta device: built on the CPU, then moved there
        model = build_sam2_model(SAM2_ARCHS[model_type]).to("meta")
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            model.encode_image(torch.empty(1, 3, 1024, 1024, device="meta"))
        return counter.get_total_flops() / 1e9
    with torch.device("meta"):
        encoder = use_fused_attention(build_sam(OFFICIAL_ARCHS[model_type])).image_encoder
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            encoder(torch.empty(1, 3, 1024, 1024))
    return counter.get_total_flops() / 1e9


def fp32_gflops(device: str, size: int = 4096, repeats: int = 5) -> float:
    """The best fp32 matmul throughput of a few ``size``² products (GFLOP/s)."""
    import torch

    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def variants(device: str, model_type: str) -> list:
    """Stock and engine fp32, then every other precision the engine keeps for this device and model."""
    kind = device.split(":")[0]
    reduced = {"cpu": ["bf16", "int8", "openvino"], "cuda": ["fp16", "bf16"]}.get(kind, [])
    if model_type.startswith("hiera"):  # OpenVINO runs SAM's encoders only
        reduced = [p for p in reduced if p != "openvino"]
    return ["stock fp32", "engine fp32"] + [f"engine {p}" for p in reduced]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_b,vit_l,vit_h",
                        help="comma-separated model types: vit_b, vit_l, vit_h; hiera_t, hiera_s, hiera_b+, hiera_l (SAM 2.1)")
    parser.add_argument("--passes", type=int, default=None, help="timed passes (default: vit_b 3, vit_l/vit_h 1)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch

    from pointsam_engine.sam.precision import cpu_has_native_bf16

    ctx = mp.get_context("spawn")
    throughput = fp32_gflops(args.device)
    print(f"device {args.device}, torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16 {cpu_has_native_bf16()}, {torch.get_num_threads()} threads; "
          f"fp32 matmul {throughput:.0f} GFLOP/s")
    print("| model | variant | seconds per pass | passes | x fp32 floor | peak RSS (MB) | cosine to stock |")
    print("|---|---|---|---|---|---|---|")
    for model_type in args.models.split(","):
        gflop = encoder_gflop(model_type)
        floor = gflop / throughput
        multi = model_type not in ONE_PASS
        passes = args.passes or (3 if multi else 1)
        stock = None
        for variant in variants(args.device, model_type):
            queue = ctx.Queue()
            proc = ctx.Process(target=_run, args=(model_type, variant, args.device, passes, multi, queue))
            proc.start()
            result = queue.get()
            proc.join()
            embedding = torch.from_numpy(result["embedding"]).double()
            stock = embedding if stock is None else stock
            cosine = float(torch.nn.functional.cosine_similarity(embedding, stock, dim=0))
            median = statistics.median(result["seconds"])
            print(f"| {model_type} | {variant} | {median:.1f} | {len(result['seconds'])} | {median / floor:.2f} | "
                  f"{_peak_text(result)} | {cosine:.5f} |", flush=True)
        print(f"| {model_type} | fp32 floor ({gflop:,.0f} GFLOP) | {floor:.1f} | | 1.00 | | |", flush=True)


if __name__ == "__main__":
    main()
