"""Benchmark ``pointsam_engine.segment()``: the PointSAM chip plan against a naive one-chip-per-point baseline.

What it does
------------
1. Generates (once, then reuses from ``--out``) a synthetic orthophoto: a ``--size`` x ``--size``
   RGB uint8 GeoTIFF, 512 x 512 tiles, ZSTD, EPSG:32633, 0.3 m pixels, written strip by strip so
   the whole raster is never in memory. Content: textured ground (coarse "fields" plus noise) and
   one rectangular, two-tone "roof" near each point.
2. Writes ``--points`` points in ``--clusters`` dense clusters (+-300 px around each centre) as a
   GeoPackage point layer in the raster CRS, plus a random ``--naive-sample`` subset as its own layer.
   Everything is deterministic for a given ``--seed``.
3. Builds the SAM (``vit_b`` at full size with random weights, in the official state-dict layout
   ``sam_vit_b_01ec64.pth``; or ``tiny`` for a smoke run) and caches it in ``--out``. The engine
   loads it exactly as users do: ``segment(..., model=str(path))``.
4. Counts encoder passes of both planners on the full layer without running any model
   (``plan_chips`` vs ``plan_per_point``: pure functions).
5. Run A, "PointSAM plan": ``segment()`` on the full layer.
   Run B, "naive": ``segment()`` on the subsample with ``pipeline.plan_chips`` replaced by
   ``plan_per_point`` (one encoder pass per point, like tools that encode a chip per click).
   The naive figures for the full layer are *extrapolated* from the subsample (a full naive run is
   one encoder pass per point: about 11 h for 2,000 points with vit_b on a 2-core CPU).
   Each run happens in its own freshly spawned process; its peak RSS is read inside it
   (``VmHWM`` from /proc/self/status, and ``ru_maxrss``; see :func:`peak_rss_mb`).
6. Prints encoder passes, seconds per stage, points per second and peak RSS of each run, a
   markdown table side by side, and PASS/FAIL for the requirement "PointSAM run peak RSS < 3 GB";
   writes every figure to ``<out>/bench_segment.json``. Exit status 1 when that check fails.

How to run
----------
Full benchmark (about an hour on a 2-core CPU, dominated by vit_b encoder passes)::

    .venv/bin/python benchmarks/bench_segment.py

Smoke run (a minute)::

    .venv/bin/python benchmarks/bench_segment.py --size 3000 --points 60 --clusters 4 \\
        --naive-sample 3 --model-arch tiny --out /tmp/bench_smoke

MB in the output are 10^6 bytes; the RSS limit is 3 GB = 3000 MB.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

CRS = "EPSG:32633"
PIXEL_M = 0.3
ORIGIN_XY = (400_000.0, 5_000_000.0)  # top-left corner, UTM 33N
TILE = 512
CLUSTER_SPREAD_PX = 300
RSS_LIMIT_MB = 3000.0  # 3 GB
STAGES = ("normalize", "points", "model", "plan", "read", "encode", "decode", "calibrate", "resolve",
          "vectorize", "write")
PER_CHIP_STAGES = ("read", "encode", "decode", "calibrate", "resolve")  # grow with the chip count
DEFAULT_OUT = Path(__file__).resolve().parent / "out"


# ------------------------------------------------------------------------------------------------
# synthetic scene: points, roofs, raster
# ------------------------------------------------------------------------------------------------
@dataclass
class Scene:
    """Points (pixel coordinates, float, pixel centres at i + 0.5) and one roof rectangle per point."""

    size: int
    rows: np.ndarray  # (N,)
    cols: np.ndarray  # (N,)
    cluster: np.ndarray  # (N,) cluster index of each point
    roofs: np.ndarray  # (N, 4) int: row0, col0, row1, col1 (end exclusive)
    roof_colours: np.ndarray  # (N, 3) uint8


def make_scene(size: int, n_points: int, n_clusters: int, seed: int) -> Scene:
    """Clustered points and a roof near each one, deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    spread = min(CLUSTER_SPREAD_PX, size // 4)
    border = spread + 64
    centres = rng.uniform(border, size - border, size=(n_clusters, 2))
    cluster = np.concatenate([np.full(len(part), k) for k, part in enumerate(np.array_split(np.arange(n_points), n_clusters))])
    offsets = rng.uniform(-spread, spread, size=(n_points, 2))
    rc = np.clip(centres[cluster] + offsets, 1, size - 2)
    rows, cols = np.floor(rc[:, 0]) + 0.5, np.floor(rc[:, 1]) + 0.5
    # a roof of 8-24 m by 8-24 m, the click somewhere in its middle half
    height, width = rng.integers(26, 80, size=(2, n_points))
    shift_r = rng.uniform(-0.25, 0.25, n_points) * height
    shift_c = rng.uniform(-0.25, 0.25, n_points) * width
    row0 = np.clip(np.round(rows - height / 2 + shift_r), 0, size).astype(int)
    col0 = np.clip(np.round(cols - width / 2 + shift_c), 0, size).astype(int)
    roofs = np.column_stack([row0, col0, np.minimum(row0 + height, size), np.minimum(col0 + width, size)])
    palette = np.array([[150, 60, 45], [120, 120, 125], [70, 70, 75], [190, 180, 170], [110, 50, 40]], np.uint8)
    colours = palette[rng.integers(0, len(palette), n_points)]
    return Scene(size, rows, cols, cluster, roofs, colours)


def ground_strip(row0: int, height: int, width: int, fields: np.ndarray, seed: int) -> np.ndarray:
    """``3 x height x width`` uint8 ground: a tint per 256-px field plus per-pixel noise."""
    rng = np.random.default_rng([seed, row0])
    rows = (np.arange(row0, row0 + height) // 256)[:, None]
    cols = (np.arange(width) // 256)[None, :]
    noise = rng.integers(0, 28, size=(height, width), dtype=np.uint8)
    out = np.empty((3, height, width), dtype=np.uint8)
    for band in range(3):
        out[band] = fields[band][rows, cols] + noise  # fields stay below 228, no overflow
    return out


def paint_roofs(strip: np.ndarray, row0: int, scene: Scene) -> None:
    """Paint every roof crossing rows ``row0 .. row0 + strip height`` into ``strip``; one half darker."""
    row1 = row0 + strip.shape[1]
    hits = np.flatnonzero((scene.roofs[:, 0] < row1) & (scene.roofs[:, 2] > row0))
    for i in hits:
        r0, c0, r1, c1 = scene.roofs[i]
        colour = scene.roof_colours[i].astype(np.int16)
        shade = np.clip(colour - 35, 0, 255).astype(np.uint8)
        a, b = max(r0, row0) - row0, min(r1, row1) - row0
        strip[:, a:b, c0:c1] = colour.astype(np.uint8)[:, None, None]
        if r1 - r0 >= c1 - c0:  # ridge along the longer side
            strip[:, a:b, (c0 + c1) // 2:c1] = shade[:, None, None]
        else:
            mid = (r0 + r1) // 2 - row0
            strip[:, max(a, mid):b, c0:c1] = shade[:, None, None]


def write_raster(path: Path, scene: Scene, seed: int) -> None:
    """Write the scene as a tiled ZSTD GeoTIFF, one 512-row strip at a time (to a temporary name first)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    size = scene.size
    n_fields = size // 256 + 1
    fields = np.random.default_rng([seed, 7]).integers(40, 200, size=(3, n_fields, n_fields)).astype(np.uint8)
    fields[1] = np.maximum(fields[1], fields[0])  # greenish ground
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=CRS,
                   transform=from_origin(*ORIGIN_XY, PIXEL_M, PIXEL_M), tiled=True, blockxsize=TILE,
                   blockysize=TILE, compress="ZSTD", photometric="RGB", interleave="pixel",
                   num_threads="ALL_CPUS", bigtiff="IF_SAFER")
    partial = path.with_name(path.name + ".partial")
    start = time.perf_counter()
    with rasterio.open(partial, "w", **profile) as dst:
        for row0 in range(0, size, TILE):
            height = min(TILE, size - row0)
            strip = ground_strip(row0, height, size, fields, seed)
            paint_roofs(strip, row0, scene)
            dst.write(strip, window=Window(0, row0, size, height))
            if (row0 // TILE) % 8 == 7 or row0 + height == size:
                print(f"  raster: {row0 + height}/{size} rows, {time.perf_counter() - start:.0f} s", flush=True)
    os.replace(partial, path)


def raster_is_usable(path: Path, size: int) -> bool:
    import rasterio

    try:
        with rasterio.open(path) as src:
            return (src.width, src.height, src.count) == (size, size, 3)
    except Exception:
        return False


def to_map(rows: np.ndarray, cols: np.ndarray) -> tuple:
    return ORIGIN_XY[0] + cols * PIXEL_M, ORIGIN_XY[1] - rows * PIXEL_M


def write_points(path: Path, scene: Scene, keep: np.ndarray) -> None:
    """Write the points ``keep`` (indexes) as a one-layer GeoPackage in the raster CRS."""
    import geopandas as gpd

    x, y = to_map(scene.rows[keep], scene.cols[keep])
    frame = gpd.GeoDataFrame({"point_id": keep.astype(np.int64), "cluster": scene.cluster[keep].astype(np.int64)},
                             geometry=gpd.points_from_xy(x, y), crs=CRS)
    if path.exists():
        path.unlink()
    frame.to_file(path, driver="GPKG", layer="points")


# ------------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------------
TINY_ARCH = dict(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
                 image_size=256, window_size=4, prompt_embed_dim=32, decoder_depth=1, decoder_mlp_dim=64,
                 decoder_num_heads=2, iou_head_hidden_dim=32)


def build_checkpoint(arch_name: str, path: str) -> None:
    """Child-process entry: build the SAM with seed 0 and save it (torch stays out of the parent)."""
    import torch

    from pointsam_engine.sam.model import OFFICIAL_ARCHS, SamArch, build_sam, save_pointsam_checkpoint

    torch.manual_seed(0)
    if arch_name == "vit_b":
        sam = build_sam(OFFICIAL_ARCHS["vit_b"])
        torch.save(sam.state_dict(), path)  # the official layout: a bare state dict
    else:
        arch = SamArch(**TINY_ARCH)
        sam = build_sam(arch)
        save_pointsam_checkpoint(sam, arch, path, name="tiny-bench")


def ensure_model(out: Path, arch_name: str) -> Path:
    """The checkpoint for ``arch_name`` in ``out``: built once (in a child process), then reused."""
    path = out / ("sam_vit_b_01ec64.pth" if arch_name == "vit_b" else "sam_tiny_bench.pth")
    if path.exists():
        return path
    print(f"building {arch_name} with random weights (seed 0) -> {path}", flush=True)
    partial = path.with_name(path.name + ".partial")
    in_fresh_process(build_checkpoint, arch_name, str(partial))
    os.replace(partial, path)
    return path


def chip_size_of(arch_name: str) -> int:
    return 1024 if arch_name == "vit_b" else int(TINY_ARCH["image_size"])


# ------------------------------------------------------------------------------------------------
# planners only (no model)
# ------------------------------------------------------------------------------------------------
def plan_counts(rows: np.ndarray, cols: np.ndarray, size: int, chip: int) -> dict:
    """Encoder passes and planning seconds of both planners for these points (working grid = native)."""
    from pointsam_engine.chips import plan_chips, plan_per_point
    from pointsam_engine.config import SegmentConfig

    margin = SegmentConfig().chip_margin * chip
    start = time.perf_counter()
    greedy = plan_chips(rows, cols, (size, size), chip, margin)
    greedy_s = time.perf_counter() - start
    start = time.perf_counter()
    naive = plan_per_point(rows, cols, (size, size), chip)
    naive_s = time.perf_counter() - start
    return {"points": int(len(rows)), "chip_size": chip, "chip_margin_px": margin,
            "plan_chips_passes": greedy.encoder_passes, "plan_per_point_passes": naive.encoder_passes,
            "plan_chips_seconds": round(greedy_s, 3), "plan_per_point_seconds": round(naive_s, 3)}


# ------------------------------------------------------------------------------------------------
# one segment() run in its own process
# ------------------------------------------------------------------------------------------------
def _naive_plan(rows, cols, grid_shape, size, margin):
    """Drop-in for ``plan_chips``: one chip centred on every point (``margin`` is ignored)."""
    from pointsam_engine.chips import plan_per_point

    return plan_per_point(rows, cols, grid_shape, size)


def _progress_printer(tag: str) -> Callable[[float, str], None]:
    """A progress callback printing at most one line per 10 s, plus every change of stage."""
    start = time.perf_counter()
    last = {"t": -1e9, "stage": None}

    def report(fraction: float, stage: str) -> None:
        now = time.perf_counter() - start
        kind = stage.split()[0]
        if kind != last["stage"] or now - last["t"] >= 10 or fraction >= 1.0:
            print(f"  [{tag}] {now:7.1f} s {100 * fraction:5.1f} % {stage}", flush=True)
            last.update(t=now, stage=kind)

    return report


def peak_rss_mb() -> Dict[str, Optional[float]]:
    """This process's peak RSS in MB: ``VmHWM`` (Linux) and ``ru_maxrss`` (KiB on Linux).

    On Linux a child's ``ru_maxrss`` starts at its parent's high-water mark (the kernel carries it
    across fork/vfork + exec), so it over-reports when the parent was big; ``VmHWM`` belongs to the
    child's own address space. This script keeps its parent small (no torch) so both agree.
    """
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    hwm = None
    try:
        with open("/proc/self/status") as fh:
            hwm = next(int(line.split()[1]) * 1024 / 1e6 for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass
    return {"vmhwm": hwm, "ru_maxrss": maxrss}


def run_segment(job: dict) -> dict:
    """Child-process entry: one ``segment()`` call; returns its report, wall seconds and peak RSS."""
    import pointsam_engine.pipeline as pipeline
    from pointsam_engine import segment

    if job["naive"]:
        pipeline.plan_chips = _naive_plan
    before = peak_rss_mb()
    start = time.perf_counter()
    result = segment(job["raster"], job["points"], job["output"], model=job["model"], device="cpu", overwrite=True,
                     progress=_progress_printer(job["tag"]))
    wall = time.perf_counter() - start
    peak = peak_rss_mb()
    import torch  # already loaded by the engine; imported here only to read its thread count

    return {"report": result.report, "wall_s": wall, "peak_rss_mb": peak["vmhwm"] or peak["ru_maxrss"],
            "ru_maxrss_mb": peak["ru_maxrss"], "rss_before_run_mb": before["vmhwm"] or before["ru_maxrss"],
            "torch_threads": torch.get_num_threads()}


def in_fresh_process(function: Callable, *args):
    """``function(*args)`` in a newly spawned interpreter, so its peak RSS is its own."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


# ------------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------------
def summarize(run: dict) -> dict:
    """The figures printed and compared for one run."""
    rep = run["report"]
    seconds = {s: float(rep["seconds"].get(s, 0.0)) for s in STAGES}
    return {"points": rep["points"], "objects": rep["objects"], "chips": rep["chips"], "chip_size": rep["chip_size"],
            "encoder_passes": rep["encoder_passes"], "encoder_passes_per_point": rep["encoder_passes_per_point"],
            "instances": rep["instances"], "skipped": rep["skipped"],
            "overlaps_before_calibration": rep["overlaps_before_calibration"],
            "overlaps_after": rep["overlaps_after"], "seconds": seconds, "wall_s": run["wall_s"],
            "points_per_s": rep["objects"] / run["wall_s"], "peak_rss_mb": run["peak_rss_mb"],
            "ru_maxrss_mb": run["ru_maxrss_mb"],
            "rss_before_run_mb": run["rss_before_run_mb"], "torch_threads": run["torch_threads"]}


def extrapolate(naive: dict, ours: dict, plan_per_point_seconds: float) -> dict:
    """Naive figures for the full layer, "extrapolated" from the subsample.

    Stages that do not depend on the chip plan (normalize, points, model, vectorize, write) are
    taken from run A, measured on the same raster and full layer; ``plan`` is ``plan_per_point``
    timed on the full layer; the per-chip stages (read, encode, decode, calibrate, resolve) are the
    subsample's seconds scaled linearly by ``full / subsample`` points (one chip per point).
    """
    n_full = ours["objects"]
    scale = n_full / naive["objects"]
    seconds = {s: (naive["seconds"][s] * scale if s in PER_CHIP_STAGES else ours["seconds"][s]) for s in STAGES}
    seconds["plan"] = plan_per_point_seconds
    outside = max(ours["wall_s"] - sum(ours["seconds"].values()), 0.0)  # opening files etc., as in run A
    wall = sum(seconds.values()) + outside
    return {"points": n_full, "objects": n_full, "encoder_passes": n_full, "encoder_passes_per_point": 1.0,
            "seconds": seconds, "wall_s": wall, "points_per_s": n_full / wall, "scale": scale}


def print_run(title: str, fig: dict) -> None:
    print(f"\n{title}")
    print(f"  objects {fig['objects']}, chips {fig['chips']}, encoder passes {fig['encoder_passes']} "
          f"({fig['encoder_passes_per_point']:.3f} per point)")
    print("  seconds per stage: " + ", ".join(f"{s} {v:.2f}" for s, v in fig["seconds"].items() if v))
    print(f"  wall {fig['wall_s']:.1f} s, {fig['points_per_s']:.3f} points/s, peak RSS {fig['peak_rss_mb']:.0f} MB "
          f"(ru_maxrss {fig['ru_maxrss_mb']:.0f} MB; before the run {fig['rss_before_run_mb']:.0f} MB), "
          f"torch threads {fig['torch_threads']}")
    print(f"  instances {fig['instances']}, skipped {fig['skipped']}, overlaps before calibration "
          f"{fig['overlaps_before_calibration']}, after {fig['overlaps_after']}")


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def markdown_table(ours: dict, naive: Optional[dict], extra: Optional[dict], plans: dict) -> str:
    """PointSAM plan vs naive (measured on the subsample, and extrapolated to the full layer)."""
    n = ours["objects"]
    head = ["", f"PointSAM plan (measured, {n} pts)"]
    if naive:
        head += [f"naive per-point (measured, {naive['objects']} pts)", f"naive per-point (extrapolated to {n} pts)"]
    rows: List[Sequence[str]] = []

    def row(label: str, a, b=None, c=None, digits: int = 2) -> None:
        rows.append([label, _fmt(a, digits)] + ([_fmt(b, digits), _fmt(c, digits)] if naive else []))

    row("encoder passes", ours["encoder_passes"], naive and naive["encoder_passes"], extra and extra["encoder_passes"])
    row("encoder passes per point", ours["encoder_passes_per_point"], naive and naive["encoder_passes_per_point"],
        extra and extra["encoder_passes_per_point"], 3)
    for stage in STAGES:
        row(f"seconds: {stage}", ours["seconds"][stage], naive and naive["seconds"][stage], extra and extra["seconds"][stage])
    row("seconds: wall total", ours["wall_s"], naive and naive["wall_s"], extra and extra["wall_s"], 1)
    row("points per second", ours["points_per_s"], naive and naive["points_per_s"], extra and extra["points_per_s"], 3)
    row("peak RSS, VmHWM (MB)", ours["peak_rss_mb"], naive and naive["peak_rss_mb"], None, 0)
    row("peak RSS, ru_maxrss (MB)", ours["ru_maxrss_mb"], naive and naive["ru_maxrss_mb"], None, 0)
    row("instances written", ours["instances"], naive and naive["instances"], None)
    row("overlaps before calibration", ours["overlaps_before_calibration"],
        naive and naive["overlaps_before_calibration"], None)
    if extra:
        rows.append(["speed-up vs naive (wall)", f"{extra['wall_s'] / ours['wall_s']:.1f}x (vs extrapolated)", "", ""])
    rows.append(["planner-only passes, full layer", f"plan_chips: {plans['plan_chips_passes']:,}"]
                + ([f"plan_per_point: {plans['plan_per_point_passes']:,}", ""] if naive else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if naive:
        lines += ["", "Extrapolated column: read/encode/decode/calibrate/resolve scaled from the subsample; plan = "
                  "plan_per_point timed on the full layer; normalize/points/model/vectorize/write taken from the "
                  "PointSAM run (they do not depend on the plan). Not measured."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the raster, points, model, outputs, JSON")
    parser.add_argument("--size", type=int, default=20_000, help="raster side in pixels")
    parser.add_argument("--points", type=int, default=2_000, help="number of points")
    parser.add_argument("--clusters", type=int, default=50, help="number of point clusters")
    parser.add_argument("--naive-sample", type=int, default=12, help="points in the naive run's subsample (0: skip it)")
    parser.add_argument("--model-arch", choices=("vit_b", "tiny"), default="vit_b",
                        help="vit_b: full size, random weights; tiny: a small SAM for smoke runs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the points, roofs and ground texture")
    parser.add_argument("--convert", action="store_true",
                        help="start run A from an empty OpenVINO cache, as a user's first run with these weights: "
                             "converting the encoder (in a child process) is part of its model stage")
    args = parser.parse_args(argv)
    if args.size < 512 or args.points < 1 or not 1 <= args.clusters <= args.points:
        parser.error("need --size >= 512, --points >= 1 and 1 <= --clusters <= --points")
    return args


def prepare_inputs(args: argparse.Namespace) -> tuple:
    """Raster (cached), full point layer, naive subsample layer, model (cached); all paths."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stem = f"s{args.size}_p{args.points}_c{args.clusters}_seed{args.seed}"
    scene = make_scene(args.size, args.points, args.clusters, args.seed)
    raster = out / f"raster_{stem}.tif"
    if raster_is_usable(raster, args.size):
        print(f"reusing raster {raster}")
    else:
        print(f"writing raster {raster} ({args.size} x {args.size} x 3, {TILE}px tiles, ZSTD)", flush=True)
        write_raster(raster, scene, args.seed)
    points = out / f"points_{stem}.gpkg"
    write_points(points, scene, np.arange(args.points))
    n_sample = min(args.naive_sample, args.points)
    sample = np.sort(np.random.default_rng([args.seed, 1]).choice(args.points, n_sample, replace=False))
    sample_points = out / f"points_{stem}_naive{n_sample}.gpkg"
    if n_sample:
        write_points(sample_points, scene, sample)
    model = ensure_model(out, args.model_arch)
    return scene, raster, points, sample, sample_points, model


@contextlib.contextmanager
def empty_openvino_cache(out: Path):
    """Runs started inside find no converted encoder (``XDG_CACHE_HOME`` points at an empty folder, removed after)."""
    before = os.environ.get("XDG_CACHE_HOME")
    with tempfile.TemporaryDirectory(prefix="empty-cache-", dir=out) as cache:
        os.environ["XDG_CACHE_HOME"] = cache
        try:
            yield
        finally:
            if before is None:
                del os.environ["XDG_CACHE_HOME"]
            else:
                os.environ["XDG_CACHE_HOME"] = before


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    scene, raster, points, sample, sample_points, model = prepare_inputs(args)
    chip = chip_size_of(args.model_arch)
    plans = plan_counts(scene.rows, scene.cols, args.size, chip)
    plans_sample = plan_counts(scene.rows[sample], scene.cols[sample], args.size, chip) if len(sample) else None
    print(f"\nplanners only, full layer ({args.points} points, chip {chip} px): plan_chips "
          f"{plans['plan_chips_passes']} encoder passes ({plans['plan_chips_seconds']:.2f} s), plan_per_point "
          f"{plans['plan_per_point_passes']} ({plans['plan_per_point_seconds']:.2f} s)")

    job = dict(raster=str(raster), model=str(model))
    print(f"\nrun A: PointSAM plan, {args.points} points, model {model.name}"
          f"{', from an empty OpenVINO cache' if args.convert else ''}", flush=True)
    with empty_openvino_cache(args.out) if args.convert else contextlib.nullcontext():
        ours = summarize(in_fresh_process(run_segment, {**job, "points": str(points),
                                                        "output": str(args.out / "pointsam_plan.gpkg"),
                                                        "naive": False, "tag": "pointsam"}))
    print_run("run A: PointSAM plan (measured)", ours)
    if ours["chip_size"] != chip:
        print(f"  warning: the engine used {ours['chip_size']} px chips, the planner-only counts assumed {chip} px")

    naive = extra = None
    if len(sample):
        print(f"\nrun B: naive per-point plan, random subsample of {len(sample)} points", flush=True)
        naive = summarize(in_fresh_process(run_segment, {**job, "points": str(sample_points),
                                            "output": str(args.out / "naive_per_point.gpkg"),
                                            "naive": True, "tag": "naive"}))
        print_run(f"run B: naive per-point plan (measured on {len(sample)} points)", naive)
        extra = extrapolate(naive, ours, plans["plan_per_point_seconds"])
        print(f"\nrun B extrapolated to {ours['objects']} points (per-chip stages x {extra['scale']:.1f}; not measured): "
              f"{extra['encoder_passes']} encoder passes, {extra['wall_s']:.0f} s = {extra['wall_s'] / 3600:.2f} h, "
              f"{extra['points_per_s']:.4f} points/s")
        if plans_sample:
            print(f"  (the PointSAM planner would cover that subsample with {plans_sample['plan_chips_passes']} passes)")

    print("\n" + markdown_table(ours, naive, extra, plans))
    worst = max(ours["peak_rss_mb"], ours["ru_maxrss_mb"])  # the larger of VmHWM and ru_maxrss
    passed = worst < RSS_LIMIT_MB
    verdict = (f"requirement: PointSAM run peak RSS < {RSS_LIMIT_MB:.0f} MB (3 GB); measured {worst:.0f} MB: "
               f"{'PASS' if passed else 'FAIL'}")
    print("\n" + verdict)

    figures = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "inputs": {"raster": str(raster), "points": str(points), "naive_points": str(sample_points) if len(sample) else None,
                   "model": str(model), "naive_sample_point_ids": sample.tolist()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "planners_full_layer": plans, "planners_naive_sample": plans_sample,
        "pointsam_plan": ours, "naive_measured": naive, "naive_extrapolated": extra,
        "rss_check": {"limit_mb": RSS_LIMIT_MB, "peak_rss_mb": worst, "pass": passed},
        "parent_peak_rss_mb": peak_rss_mb(),
    }
    target = args.out / "bench_segment.json"
    target.write_text(json.dumps(figures, indent=2, default=float))
    print(f"figures written to {target}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
