"""Other ways to run SAM's image encoder, side by side with the engine's own, in one process, passes interleaved.

The engine runs the encoder in eager PyTorch (fused attention; ``--precision`` fp32, bf16 or int8:
``benchmarks/bench_encoder.py``). This script measures what the issue asked to consider before keeping that:

- ``torch.compile`` (inductor) of the engine's encoder, fp32 and under bf16 autocast, with inductor's on-disk
  cache (the compile time is printed: the first run pays it, later processes reuse the cache);
- ONNX Runtime (CPU execution provider) on the engine's fp32 encoder exported to ONNX;
- OpenVINO (CPU plugin; on a CPU with AMX or AVX512-BF16 it runs bf16 by default) on the same ONNX file;
- OpenVINO in int8: the same model quantized by NNCF (OpenVINO's own compression tool) after training, its
  activations' ranges calibrated on :data:`CALIBRATION_SCENES` generated building scenes.

Each variant encodes the same 1024² chip; after one warm-up pass the variants run in turns, ``--passes`` rounds,
so load hits them alike. Prints seconds per pass (median), the time to get each ready (export, compile,
quantize) and the embedding's cosine with the engine's fp32, on that chip (uniform noise) and on a generated
building scene none of the variants was calibrated on. Variants whose package is missing are skipped with the
reason (``pip install onnx onnxscript onnxruntime nncf``: only openvino is a dependency of the project).

    .venv/bin/python benchmarks/bench_encoder_backends.py [--model vit_b] [--passes 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _engine(model_type: str, precision: str):
    from bench_encoder import _checkpoint

    from pointsam_engine.sam.model import load_model
    from pointsam_engine.sam.precision import encoder_runner

    loaded = load_model(str(_checkpoint(model_type)), device="cpu", precision=precision)
    return loaded.sam, encoder_runner(loaded.sam, precision, "cpu")


CALIBRATION_SCENES = 8  # generated building scenes (seeds 1-8) that calibrate OpenVINO int8; seed 0 is measured


def scene_chip(seed: int):
    """A generated 1024² building scene as the encoder's input ``(1, 3, 1024, 1024)`` float32, before SAM's
    preprocessing."""
    import torch

    from pointsam_engine.demo.scenes import render

    return torch.from_numpy(render("buildings", seed=seed).image.astype("float32"))[None]


def variants(model_type: str, folder: Path, preprocess: Callable) -> Dict[str, Callable]:
    """name -> a function that returns a ready encoder (chip tensor -> embedding tensor); building it may take long.
    ``preprocess``: SAM's pixel normalisation and padding (calibration chips go through it as the bench chip did)."""
    import numpy as np
    import torch

    def compiled(precision):
        def build():
            _, run = _engine(model_type, precision)
            return torch.compile(run)
        return build

    def onnx_file():
        path = folder / f"{model_type}_encoder.onnx"
        if not path.exists():
            sam, _ = _engine(model_type, "fp32")
            torch.onnx.export(sam.image_encoder, (torch.zeros(1, 3, 1024, 1024),), str(path), dynamo=False,
                              opset_version=17, input_names=["image"], output_names=["embedding"])
        return path

    def onnxruntime():
        import onnxruntime as ort

        session = ort.InferenceSession(str(onnx_file()), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])

    def openvino():
        import openvino as ov

        return on_openvino(ov.Core().compile_model(str(onnx_file()), "CPU"))

    def on_openvino(compiled_model):
        return lambda x: torch.from_numpy(np.asarray(compiled_model(x.numpy())[0]))

    def openvino_int8():
        import nncf
        import openvino as ov

        chips = [preprocess(scene_chip(seed)).numpy() for seed in range(1, CALIBRATION_SCENES + 1)]
        quantized = nncf.quantize(ov.Core().read_model(str(onnx_file())), nncf.Dataset(chips),
                                  model_type=nncf.ModelType.TRANSFORMER, subset_size=len(chips))
        return on_openvino(ov.Core().compile_model(quantized, "CPU"))

    return {
        "engine fp32 (eager)": lambda: _engine(model_type, "fp32")[1],
        "engine bf16 (eager)": lambda: _engine(model_type, "bf16")[1],
        "torch.compile fp32": compiled("fp32"),
        "torch.compile bf16": compiled("bf16"),
        "ONNX Runtime fp32": onnxruntime,
        "OpenVINO (CPU default)": openvino,
        "OpenVINO int8 (NNCF)": openvino_int8,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated variant names to run (default: all)")
    args = parser.parse_args()
    import torch
    from bench_encoder import OUT, _chip

    OUT.mkdir(parents=True, exist_ok=True)
    sam, _ = _engine(args.model, "fp32")
    with torch.inference_mode():
        chip = sam.preprocess(_chip("cpu")).contiguous()
        scene = sam.preprocess(scene_chip(0)).contiguous()
    ready, build_seconds, on_scene = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for name, build in variants(args.model, Path(tmp), sam.preprocess).items():
            if args.only and name not in args.only.split(","):
                continue
            start = time.perf_counter()
            try:
                encode = build()
                reference = encode(chip)  # warm-up (for torch.compile: the compilation)
            except ImportError as exc:
                print(f"skipped {name}: {exc}")
                continue
            build_seconds[name] = time.perf_counter() - start
            ready[name] = (encode, reference.float().flatten())
            on_scene[name] = encode(scene).float().flatten()
            print(f"ready {name} in {build_seconds[name]:.0f} s", flush=True)
        seconds = {name: [] for name in ready}
        for _ in range(args.passes):
            for name, (encode, _) in ready.items():
                start = time.perf_counter()
                encode(chip)
                seconds[name].append(time.perf_counter() - start)
    reference = "engine fp32 (eager)" if "engine fp32 (eager)" in ready else next(iter(ready))
    print(f"\n{args.model}, 1024² chip, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.passes} interleaved rounds")
    print(f"| variant | seconds per pass (median) | ready in (s: build, export, compile or quantize + first pass) "
          f"| cosine to {reference}: noise chip | generated scene |")
    print("|---|---|---|---|---|")

    def cosine(a, b) -> float:
        return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))

    for name, (encode, embedding) in ready.items():
        print(f"| {name} | {statistics.median(seconds[name]):.2f} | {build_seconds[name]:.0f} "
              f"| {cosine(embedding, ready[reference][1]):.5f} | {cosine(on_scene[name], on_scene[reference]):.5f} |")


if __name__ == "__main__":
    main()
