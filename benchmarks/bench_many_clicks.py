"""Everything but the model, with many clicks: ``segment()`` with a stand-in for SAM (a small square per click,
``tests.conftest.SquarePredictor``), so what is timed is reading, grouping, planning, calibration, settling
shared pixels, tracing, measuring. Clicks are uniform over a random RGB raster; prints the wall time and
the run report's seconds per stage and the time spent inside the stand-in model, so what is left is
everything but the model.

    .venv/bin/python benchmarks/bench_many_clicks.py [--clicks 100000] [--size 3000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pointsam_engine.pipeline import segment  # noqa: E402
from tests.conftest import SquarePredictor, write_raster  # noqa: E402


class TimedPredictor(SquarePredictor):
    """The stand-in model, timing its own calls."""

    seconds = 0.0

    def predict(self, prompts):
        start = time.perf_counter()
        try:
            return super().predict(prompts)
        finally:
            self.seconds += time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=3000, help="raster side in pixels (0.5 m)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        raster = write_raster(Path(folder) / "r.tif", rng.integers(0, 255, (3, args.size, args.size), dtype=np.uint8))
        rows_cols = rng.uniform(1, args.size - 1, (args.clicks, 2))
        xy = np.column_stack([500000 + 0.5 * rows_cols[:, 1], 4000000 - 0.5 * rows_cols[:, 0]])
        points = Path(folder) / "p.gpkg"
        gpd.GeoDataFrame({"id": np.arange(args.clicks)}, geometry=shapely.points(xy), crs="EPSG:32633").to_file(points)
        predictor = TimedPredictor(half=2)
        start = time.perf_counter()
        result = segment(raster, points, None, predictor=predictor)
        wall = time.perf_counter() - start
    report = result.report
    print(f"{args.clicks:,} clicks on {args.size:,}² pixels: {wall:.1f} s, {report['chips']} chips, "
          f"{report['instances']:,} instances; in the stand-in model {predictor.seconds:.1f} s, "
          f"everything else {wall - predictor.seconds:.1f} s")
    print("seconds per stage:", report["seconds"], "objects tried on a coarser grid:", report.get("coarse_retries"))


if __name__ == "__main__":
    main()
