"""One click once its chip is encoded: ``POST /v1/predict`` from request to polygon, as the QGIS map tool sends it.

Generates a buildings scene, starts the API in this process (FastAPI's test client: the same routes,
validation and JSON as ``pointsam serve``, without the socket), and for each of ``--clicks`` building
clicks sends the request twice: the first may run the encoder, the second finds the embedding cached
and is timed. Prints the median and 90th percentile, and where the time of one cached click goes
(cProfile of the route's work, top functions by cumulative time).

    .venv/bin/python benchmarks/bench_click.py [--model vit_b-random|pointsam-tiny|PATH] [--precision auto] [--clicks 20]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b-random",
                        help="vit_b-random (official layout, random weights, from bench_encoder.py), or a model name/path")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--size", type=int, default=1024, help="scene side in pixels")
    args = parser.parse_args()

    import numpy as np
    import pyogrio
    import shapely
    from fastapi.testclient import TestClient

    from pointsam_engine.api.app import create_app
    from pointsam_engine.api.engine import Engine
    from pointsam_engine.config import SegmentConfig
    from pointsam_engine.demo.scenes import generate
    from pointsam_engine.errors import PointsError

    model = args.model
    if model == "vit_b-random":
        from bench_encoder import _checkpoint

        model = str(_checkpoint("vit_b"))
    scene = generate("buildings", OUT / "click_scene", size=args.size, seed=5)
    engine = Engine(SegmentConfig(model=model, device="cpu", precision=args.precision))
    client = TestClient(create_app(engine, token="bench"), base_url="http://127.0.0.1",
                        headers={"Authorization": "Bearer bench"})
    clicks = shapely.get_coordinates(pyogrio.read_dataframe(scene["points"]).geometry.values)[:args.clicks]

    def click(xy):
        response = client.post("/v1/predict", json={"raster": str(scene["raster"]), "positive": [list(map(float, xy))]})
        if response.status_code != 200:
            return None
        return response.json()

    seconds, encode, vertices = [], [], []
    for xy in clicks:
        start = time.perf_counter()
        first = click(xy)
        if first is None:  # e.g. the model found nothing there
            continue
        if first["encoded"]:
            encode.append(time.perf_counter() - start)
        start = time.perf_counter()
        answer = click(xy)
        seconds.append(time.perf_counter() - start)
        assert not answer["encoded"], "the second click must find the embedding cached"
        vertices.append(len(shapely.get_coordinates(shapely.geometry.shape(answer["object"]["geometry"]))))
    ms = np.array(seconds) * 1000
    print(f"model {engine.model.label}, precision {engine.model.precision}, {len(ms)} clicks on a {args.size}² scene")
    if encode:
        print(f"first click on a chip (encoder ran): median {statistics.median(encode):.2f} s over {len(encode)}")
    print(f"click with its chip encoded, request to polygon: median {np.median(ms):.1f} ms, "
          f"90th percentile {np.percentile(ms, 90):.1f} ms, polygon vertices median {int(np.median(vertices))}")
    work = []
    for xy in clicks:  # the same clicks without HTTP and JSON: the route's work alone
        start = time.perf_counter()
        try:
            engine.clicks.predict(str(scene["raster"]), [list(map(float, xy))], predictor=engine.predictor())
        except PointsError:  # what the route answered 422 for (no object found there)
            continue
        work.append(time.perf_counter() - start)
    print(f"the route's work alone (no HTTP, no JSON): median {np.median(work) * 1000:.1f} ms")
    profile = cProfile.Profile()  # the route's work (it runs on a worker thread, which cProfile does not follow)
    profile.enable()
    for xy in clicks[:5]:
        engine.clicks.predict(str(scene["raster"]), [list(map(float, xy))], predictor=engine.predictor())
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(30)
    print("\nfive cached clicks (the route's work), by cumulative time:\n" + text.getvalue())


if __name__ == "__main__":
    main()
