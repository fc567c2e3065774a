"""How much do adapted masks grow? The form self-training's drift takes (docs/accuracy.md).

For the scenes of a ``domain_shift.py`` run and the adapters it left, prints beside zero-shot (the base model):

- *area vs truth*: the median, over test objects, of the mask's area over the area of the truth polygon that
  holds its click;
- *area_vs_base*: the median, over training clicks, of the mask's area over the base model's, which is what
  ``pointsam train``'s validation reports without polygons (:func:`training.validation.area_growth`).

    .venv/bin/python benchmarks/mask_growth.py benchmarks/out/domain_shift [ADAPTER ...]   # default: all *.adapter.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyogrio
import shapely

from pointsam_engine.pipeline import segment
from training.validation import area_growth, object_areas


def instances(folder: Path, adapter=None) -> dict:
    """Each scene's instance layer (one polygon per click), by raster path."""
    return {tif: segment(tif, tif.with_name(tif.stem + "_points.gpkg"), None, adapter=adapter).layers["instances"]
            for tif in sorted(folder.glob("*.tif"))}


def areas_by_click(layers: dict) -> dict:
    out = {}
    for tif, layer in layers.items():
        out.update(object_areas(layer.assign(instance=layer["point_fid"]), prefix=f"{tif.name}:"))
    return out


def area_vs_truth(layers: dict) -> float:
    ratios = []
    for tif, layer in layers.items():
        truth = pyogrio.read_dataframe(tif.with_name(tif.stem + "_truth.gpkg")).geometry.values
        clicks = pyogrio.read_dataframe(tif.with_name(tif.stem + "_points.gpkg"), fid_as_index=True).geometry
        tree = shapely.STRtree(truth)
        for fid, mask in zip(layer["point_fid"], layer.geometry.values):
            holder = tree.query(clicks[fid], predicate="within")
            if len(holder):
                ratios.append(mask.area / truth[holder[0]].area)
    return float(np.median(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="A domain_shift.py --out folder (its train/ and test/ scenes).")
    parser.add_argument("adapters", nargs="*", type=Path)
    args = parser.parse_args()
    adapters = args.adapters or sorted(args.run.glob("*.adapter.pt"))
    base_train = areas_by_click(instances(args.run / "train"))
    print("| model | area vs truth (test) | area_vs_base (training clicks) |\n|---|---|---|")
    print(f"| zero-shot | {area_vs_truth(instances(args.run / 'test')):.2f} | 1.00 |")
    for adapter in adapters:
        growth = area_growth(areas_by_click(instances(args.run / "train", adapter)), base_train)
        print(f"| {adapter.name} | {area_vs_truth(instances(args.run / 'test', adapter)):.2f} | {growth:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
