"""The working grid against the ground resolution: the bundled model on real chips at several ``--chip-scale``.

Real roofs come at many resolutions: Kampala's 27 OAM chips at z19 (~0.3 m), z20 (~0.15 m) and z21 (~0.075 m),
and Banepa's held-out chips at 0.13 m (``training.realdata``: each chip against its OpenStreetMap footprints,
one click per footprint at its representative point); beside them two generated scenes of each kind the model
was trained on (``pointsam_engine.demo.scenes``, 512², seeds 7 and 8: buildings at 0.3 m, SAR ships at 1.5 m,
against their truth). Each chip is segmented with the engine's defaults at
every ``--scales`` value (``--chip-scale``: below 1 the chip is read at a finer grid than the raster's, above 1
at a coarser one), and, per object, the mask of the scale the model's own IoU head scores higher (the choice
the coarse retry makes for objects larger than a chip), and the mask read finer where the one at the first
scale covers under ``SMALL_PX`` raster pixels. Printed: mIoU per zoom level and set, side by side in
one run.

    .venv/bin/python benchmarks/working_scale.py [--scales 1 0.5] [--model pointsam-tiny]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

import geopandas as gpd
import pandas as pd

from pointsam_engine import segment
from pointsam_engine.config import SegmentConfig
from pointsam_engine.demo.scenes import generate
from pointsam_engine.evaluate import Grid, score_image, summarize
from pointsam_engine.pipeline import make_predictor
from pointsam_engine.sam.model import DEFAULT_MODEL
from training.realdata import evaluation_sets

SETS = ("Kampala (27 chips)", "Banepa held-out (8 chips)")  # of training.realdata.evaluation_sets
GENERATED = {"buildings": "generated buildings", "ships": "generated ships"}


def group_of(set_name: str, raster: Path) -> str:
    """Kampala's chips by zoom level (the file name ends in it), the others by set."""
    return f"Kampala z{raster.stem.rsplit('-', 1)[-1]}" if set_name.startswith("Kampala") else set_name.split(" (")[0]


def cases(folder: Path) -> dict:
    """``{set: [(raster, truth, clicks)]}``: the real sets, then the generated scenes."""
    real = evaluation_sets(folder)
    out = {name: real[name] for name in SETS}
    for kind, name in GENERATED.items():
        scenes = [generate(kind, folder / f"{kind}_{seed}", size=512, seed=seed, name=kind) for seed in (7, 8)]
        out[name] = [(s["raster"], gpd.read_file(s["truth"]), s["points"]) for s in scenes]
    return out


SMALL_PX = 32 ** 2  # a mask 8 of the decoder's low-resolution pixels across (4 chip pixels each)


def finer_where_small(layers: dict, pixel_area: float) -> gpd.GeoDataFrame:
    """Per clicked object, the mask of the finest scale where the first scale's covers under ``SMALL_PX``
    pixels, else the first scale's (layers in the raster's CRS, ``pixel_area`` in its units)."""
    first, finest = layers[next(iter(layers))], layers[min(layers)]
    small = set(first.loc[first.geometry.area < SMALL_PX * pixel_area, "point_fid"])
    small &= set(finest["point_fid"])
    both = pd.concat([first[~first["point_fid"].isin(small)], finest[finest["point_fid"].isin(small)]],
                     ignore_index=True)
    return gpd.GeoDataFrame(both, geometry="geometry", crs=first.crs)


def scored_higher(layers: dict) -> gpd.GeoDataFrame:
    """Per clicked object, the feature of the scale whose mask the model's IoU head scores highest."""
    every = pd.concat(layers.values(), ignore_index=True)
    best = every.loc[every.groupby("point_fid")["score"].idxmax()]
    return gpd.GeoDataFrame(best, geometry="geometry", crs=every.crs)


def measure(model: str, scales, folder: Path) -> dict:
    """``{variant: {group: [per-chip scores]}}`` for each scale and the per-object choice."""
    predictor = make_predictor(SegmentConfig(model=model, device="cpu"))
    scores = defaultdict(lambda: defaultdict(list))
    for set_name, chips in cases(folder).items():
        for raster, truth, points in chips:
            clicks, grid = gpd.read_file(points, fid_as_index=True), Grid.from_raster(raster)
            layers = {s: segment(raster, points, None, config=SegmentConfig(model=model, device="cpu", chip_scale=s),
                                 predictor=predictor).layers["instances"] for s in scales}
            variants = {f"--chip-scale {s:g}": layer for s, layer in layers.items()}
            if len(scales) > 1:
                variants["per object, the scale scored higher"] = scored_higher(layers)
                variants[f"the finest scale where the first's mask is under {SMALL_PX} px"] = finer_where_small(
                    layers, abs(grid.transform.a * grid.transform.e))
            for variant, layer in variants.items():
                score = score_image(layer, truth, grid, clicks)
                scores[variant][group_of(set_name, raster)].append(score)
                if set_name.startswith("Kampala"):
                    scores[variant]["Kampala all"].append(score)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        scores = measure(args.model, args.scales, Path(tmp))
    groups = ["Kampala z19", "Kampala z20", "Kampala z21", "Kampala all", "Banepa held-out", *GENERATED.values()]
    print(f"model {args.model}; mIoU, one click per object (images per group in brackets)")
    first = next(iter(scores.values()))
    print("| variant | " + " | ".join(f"{g} ({len(first[g])})" for g in groups) + " |")
    print("|---|" + "---|" * len(groups))
    for variant, by_group in scores.items():
        print(f"| {variant} | " + " | ".join(f"{summarize(by_group[g])['miou']:.3f}" for g in groups) + " |")


if __name__ == "__main__":
    main()
