"""Outlines side by side: none / smoothing / regularize, in one run, on real and generated scenes.

Real: the Kampala OAM chips (all 27: 7 at z19, 4 at z20, 16 at z21) and Banepa's 8 held-out chips, the sets
of ``training.realdata.evaluation_sets`` (the model card's), each against its OpenStreetMap footprints clipped
to the chip, one click per footprint at its representative point (``training.realdata.chip_cases``).
Generated: a buildings scene and a ships scene (seed 7) with their truth. The bundled model segments every
chip once per mode; "smoothing" is ``--regularize ships`` (corner cutting), "regularize" is
``--regularize buildings`` (``ships`` on the ships scene). Printed: mIoU and mF1 against the footprints,
the median vertex count against the footprints', the right-angle share (corners within 10° of 90°), the
share of outlines whose oriented box turns more than 10° from their footprint's (``walls_off``: the footprint
their click lies in, angles on the ground), overlapping pairs, and the seconds regularization adds to
vectorizing per 1,000 objects.

``--tune`` prints the same on the sets ``regularize.py``'s constants are chosen on, none of them in the default
table: Banepa's 40 training chips and two generated buildings scenes (``TUNE_SEEDS``).

    .venv/bin/python benchmarks/bench_outlines.py [--tune]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np

from pointsam_engine import segment
from pointsam_engine.config import SegmentConfig
from pointsam_engine.demo.scenes import generate
from pointsam_engine.evaluate import Grid, score_image, summarize
from pointsam_engine.measure import Measurer
from pointsam_engine.pipeline import make_predictor
from pointsam_engine.regularize import right_angle_share, turn, vertex_counts
from pointsam_engine.vectorize import oriented_boxes, overlapping
from training.realdata import BUILDINGS, DENSE_CHIP, banepa_chips, chip_cases, evaluation_sets

MODES = {"none": "none", "smoothing": "ships", "regularize": "buildings"}
TUNE_SEEDS = (21, 22)  # the generated scenes --tune adds
TURNED_DEG = 10.0  # an outline whose box turns more than this from its footprint's runs off the walls


def scene_cases(folder: Path, seeds=(7,), kinds=("buildings", "ships")):
    for kind in kinds:
        cases = []
        for seed in seeds:
            paths = generate(kind, folder / str(seed), size=512, seed=seed, name=kind)
            cases.append((paths["raster"], gpd.read_file(paths["truth"]), paths["points"]))
        yield kind, cases


def walls_off(inst: gpd.GeoDataFrame, truth: gpd.GeoDataFrame, clicks: gpd.GeoDataFrame) -> np.ndarray:
    """How far (degrees, modulo 90, on the ground) each object's oriented box turns from the box of the footprint
    its click lies in."""
    truth = truth.to_crs(inst.crs)
    hits = gpd.sjoin(clicks.to_crs(inst.crs), truth, predicate="within")
    hits = hits[~hits.index.duplicated()]
    outlines = inst.set_index("point_fid").geometry
    fids = hits.index.intersection(outlines.index)
    measurer = Measurer(inst.crs)
    ours = measurer.box_dimensions(oriented_boxes(outlines.loc[fids].values))[0]
    footprints = truth.geometry.loc[hits.loc[fids, "index_right"]].values
    return np.abs(turn(ours, measurer.box_dimensions(oriented_boxes(footprints))[0]))


def measure(cases, mode: str, predictor) -> dict:
    scores, preds, truths, seconds, objects, overlaps, turns = [], [], [], 0.0, 0, 0, []
    for raster, truth, points in cases:
        res = segment(raster, points, None, regularize=mode, predictor=predictor)
        inst = res.layers["instances"]
        clicks = gpd.read_file(points, fid_as_index=True)
        scores.append(score_image(inst, truth, Grid.from_raster(raster), clicks))
        turns.append(walls_off(inst, truth, clicks))
        preds += list(inst.geometry.values)
        truths += list(truth.geometry.values)
        seconds += res.report["seconds"]["vectorize"]
        objects += len(inst)
        overlaps += len(overlapping(inst.geometry.values))
    figures = summarize(scores)
    return {"miou": figures["miou"], "mf1": figures["mf1"], "vertices": float(np.median(vertex_counts(preds))),
            "truth_vertices": float(np.median(vertex_counts(truths))), "right": right_angle_share(preds),
            "truth_right": right_angle_share(truths), "overlaps": overlaps, "objects": objects,
            "turned": float(np.mean(np.concatenate(turns) > TURNED_DEG)),
            "vectorize_s": seconds}


def outline_sets(tmp: Path) -> list:
    """``training.realdata``'s real sets but the dense chip (one of Kampala's), then a generated scene of each
    kind."""
    missing = [f for f in ("hotosm_oam_kampala", "hotosm_oam_banepa") if not (BUILDINGS / f).is_dir()]
    if missing:
        print(f"real sets left out: {BUILDINGS / missing[0]} is missing", file=sys.stderr)
    real = {} if missing else evaluation_sets(tmp)
    return ([(name, cases, "buildings") for name, cases in real.items() if name != DENSE_CHIP]
            + [(f"generated {kind}", cases, kind) for kind, cases in scene_cases(tmp / "scenes")])


def tuning_sets(tmp: Path) -> list:
    banepa = BUILDINGS / "hotosm_oam_banepa"
    if not banepa.is_dir():
        sys.exit(f"--tune needs Banepa's chips in {banepa}; run it where ../shared/data is")
    chips = banepa_chips(held_out=False)
    sets = [(f"Banepa training ({len(chips)} chips)",
             list(chip_cases(chips, gpd.read_file(banepa / "osm_buildings.geojson"), tmp, "banepa_train")), "buildings")]
    seeds = ", ".join(map(str, TUNE_SEEDS))
    return sets + [(f"generated {kind} (seeds {seeds})", cases, kind)
                   for kind, cases in scene_cases(tmp / "tune", seeds=TUNE_SEEDS, kinds=("buildings",))]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune", action="store_true",
                        help="the sets regularize.py's constants are chosen on instead: Banepa's 40 training chips "
                             f"and generated buildings scenes of seeds {TUNE_SEEDS} (none of them in the default table)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    predictor = make_predictor(SegmentConfig(device="cpu"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sets = tuning_sets(tmp) if args.tune else outline_sets(tmp)
        for name, cases, kind in sets:
            base = None
            for label, mode in MODES.items():
                mode = "ships" if kind == "ships" and label == "regularize" else mode
                m = measure(cases, mode, predictor)
                base = base or m
                added = 1000 * (m["vectorize_s"] - base["vectorize_s"]) / max(m["objects"], 1)
                rows.append((name, f"{label} ({mode})", m, added))
                print(f"{name} {label}: done", file=sys.stderr)
    print("| scenes | outlines | objects | mIoU | mF1 | median vertices (footprints) | right angles (footprints) "
          f"| turned over {TURNED_DEG:.0f}° from the footprint | overlapping pairs | s added per 1,000 objects |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, label, m, added in rows:
        print(f"| {name} | {label} | {m['objects']} | {m['miou']:.3f} | {m['mf1']:.3f} | {m['vertices']:.0f} "
              f"({m['truth_vertices']:.0f}) | {m['right']:.0%} ({m['truth_right']:.0%}) | {m['turned']:.0%} | {m['overlaps']} "
              f"| {added:.2f} |")


if __name__ == "__main__":
    main()
