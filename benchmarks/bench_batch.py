"""Benchmark ``pointsam batch``: 1 worker x 2 threads vs 2 workers x 1 thread vs a plain loop, in one run.

What it does
------------
1. Generates a buildings scene (``--cols`` x ``--rows`` tiles of ``--tile`` pixels) with the demo generator and
   cuts it into abutting tiles with rasterio windows (``--rasters`` = cols x rows, 20 by default).
2. Plain loop: ``segment()`` on each tile in turn with its clicks (the clicks :mod:`pointsam_engine.batch.assign`
   gives it), one model loaded once, in a fresh process with torch on every core (``OMP_NUM_THREADS`` = cores).
3. ``batch_segment()`` on a LocalCluster of 1 worker x 2 threads, then 2 workers x 1 thread (torch: one thread
   per task, as the batch sets it), each from a fresh work folder.
4. Scheduler overhead per task: 200 empty tasks on a 2 x 1 LocalCluster, wall time / 200.
5. Prints wall time, encoder passes, seconds per task and overhead side by side, and a *projection* of the wall
   time on N workers from those measured per-task costs: startup + ceil(tasks / N) x task time + overhead x tasks.

How to run (about three minutes on a 2-core CPU)::

    .venv/bin/python benchmarks/bench_batch.py --out /tmp/bench_batch
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOOP = """
import json, sys, time
import geopandas as gpd
from pointsam_engine.pipeline import make_predictor, segment
from pointsam_engine.config import SegmentConfig
tasks = json.loads(sys.argv[1])
start = time.perf_counter()
predictor = make_predictor(SegmentConfig())
passes = 0
for raster, points in tasks:
    passes += segment(raster, points, None, predictor=predictor).report["encoder_passes"]
print(json.dumps({"wall": time.perf_counter() - start, "encoder_passes": passes}))
"""


def make_tiles(out: Path, cols: int, rows: int, tile: int):
    from pointsam_engine.demo.scenes import generate
    from tests.engine.batch.scenes import cut

    files = generate("buildings", out / "scene", size=max(cols, rows) * tile, seed=7)
    windows = [(c * tile, r * tile, tile, tile) for r in range(rows) for c in range(cols)]
    return files, cut(files["raster"], out / "tiles", windows)


def plain_loop(out: Path, files, tiles, cores: int) -> dict:
    from pointsam_engine.batch.assign import plan_tasks
    from pointsam_engine.config import SegmentConfig

    plan = plan_tasks(files["points"], [str(t) for t in tiles], SegmentConfig(), 1 << 30)
    jobs = []
    for task in plan.tasks:
        path = out / "loop" / f"{task.id}.gpkg"
        path.parent.mkdir(exist_ok=True)
        plan.points.loc[list(task.fids)].reset_index(names="fid").to_file(path, layer="points")
        jobs.append((task.raster, str(path)))
    env = {**os.environ, "OMP_NUM_THREADS": str(cores), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", LOOP, json.dumps(jobs)], env=env, check=True, capture_output=True,
                          text=True)
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "tasks": len(jobs)}


def batch(out: Path, files, tiles, workers: int, name: str) -> dict:
    """A batch on a LocalCluster of ``workers`` processes (threads: the cores left per worker, as the CLI sets)."""
    from pointsam_engine.batch import batch_segment

    start = time.perf_counter()
    result = batch_segment(files["points"], out / f"{name}.gpkg", [str(out / "tiles")], workers=workers)
    wall = time.perf_counter() - start
    return {"wall": wall, "encoder_passes": result.report["encoder_passes"], "tasks": result.report["tasks"]}


def overhead(n: int = 200) -> dict:
    from distributed import Client, LocalCluster

    start = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as lc, Client(lc) as client:
        startup = time.perf_counter() - start
        t0 = time.perf_counter()
        client.gather(client.map(lambda i: i, range(n), pure=False))
        return {"startup": startup, "per_task": (time.perf_counter() - t0) / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/bench_batch")
    parser.add_argument("--cols", type=int, default=5)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--tile", type=int, default=256)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("b*.gpkg"):
        old.unlink()
    cores = os.cpu_count() or 1
    files, tiles = make_tiles(out, args.cols, args.rows, args.tile)
    runs = {"plain loop (1 process, torch x%d)" % cores: plain_loop(out, files, tiles, cores),
            "batch 1 worker x 2 threads": batch(out, files, tiles, 1, "b1x2"),
            "batch 2 workers x 1 thread": batch(out, files, tiles, 2, "b2x1")}
    cost = overhead()
    print(f"{len(tiles)} rasters of {args.tile}x{args.tile} px, {cores} cores, bundled model\n")
    print("| run | wall s | encoder passes | s per task |")
    print("|---|---|---|---|")
    for name, r in runs.items():
        print(f"| {name} | {r['wall']:.1f} | {r['encoder_passes']} | {r['wall'] / r['tasks']:.2f} |")
    print(f"\nDask LocalCluster (2x1) startup {cost['startup']:.2f} s; scheduler overhead {cost['per_task'] * 1000:.1f} ms "
          "per task (200 empty tasks)")
    task_s = runs["batch 2 workers x 1 thread"]["wall"] * 2 / len(tiles)  # one worker's seconds per task, measured
    print(f"\nProjection (not measured): wall ~ startup + ceil(tasks / N) x {task_s:.2f} s + tasks x overhead, "
          f"for 1000 rasters like these:")
    for n in (1, 2, 8, 32, 128):
        print(f"  N={n:>3}: {cost['startup'] + math.ceil(1000 / n) * task_s + 1000 * cost['per_task']:8.0f} s")
    (out / "bench_batch.json").write_text(json.dumps({"runs": runs, "overhead": cost}, indent=2))


if __name__ == "__main__":
    main()
