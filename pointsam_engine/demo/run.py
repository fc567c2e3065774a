"""``pointsam demo``: generate a buildings and a ships scene, segment them with the bundled model,
evaluate against the truth, and leave GeoPackages, evaluation JSON and PNG previews to look at.

:func:`run_scene` is also how the model card's quality figures are measured (see ``training/``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import pyogrio

from ..evaluate import Grid, format_table, score_image, summarize
from ..output import write_json
from ..pipeline import segment
from ..raster import Normalization
from . import DEMO_FOLDER
from .scenes import KINDS, render, write_scene

DEMO_SEEDS = {"buildings": 90001, "ships": 90002}  # never used in training (training uses seeds below 10000)
DEMO_SIZE = 768


def run_scene(kind: str, folder, *, seed: int, size: int = DEMO_SIZE, model: Optional[str] = None,
              calibration: bool = True, predictor=None, preview: bool = True, name: Optional[str] = None,
              density: float = 1.0, **options) -> dict:
    """Generate one scene (``density`` as :func:`~pointsam_engine.demo.scenes.render`), segment its clicks, score
    the result; returns the figures and file paths."""
    from .preview import render_preview

    folder = Path(folder)
    name = name or kind
    scene = render(kind, size, seed=seed, density=density)
    paths = write_scene(scene, folder, name)
    out = folder / f"{name}_pointsam.gpkg"
    result = segment(paths["raster"], paths["points"], out, model=model, calibration=calibration,
                     overwrite=True, predictor=predictor, **options)
    grid = Grid(scene.transform, scene.labels.shape, result.layers["instances"].crs)
    truth = pyogrio.read_dataframe(paths["truth"])
    points = pyogrio.read_dataframe(paths["points"], fid_as_index=True)
    figures = summarize([score_image(result.layers["instances"], truth, grid, points)])
    figures.update(kind=kind, seed=seed, density=density, calibration=calibration, model=result.report["model"],
                   encoder_passes=result.report["encoder_passes"], seconds=sum(result.report["seconds"].values()))
    evaluation = write_json(folder / f"{name}_evaluation.json", figures)
    files = {**{k: str(v) for k, v in paths.items()}, "output": str(out), "evaluation": str(evaluation)}
    if preview:
        files["preview"] = str(render_preview(paths["raster"], result.layers, folder / f"{name}_preview.png",
                                              Normalization(**result.report["stretch"])))
    return {"figures": figures, "files": files}


def run_demo(out_dir=DEMO_FOLDER, model: Optional[str] = None, echo=print) -> dict:
    """Both scenes with calibration on; prints the evaluation and where the files are."""
    out_dir = Path(out_dir)
    runs = {}
    for kind in KINDS:
        echo(f"{kind}: generating a {DEMO_SIZE} x {DEMO_SIZE} scene (seed {DEMO_SEEDS[kind]}) and segmenting its clicks ...")
        start = time.perf_counter()
        runs[kind] = run_scene(kind, out_dir, seed=DEMO_SEEDS[kind], model=model)
        echo(format_table(runs[kind]["figures"]))
        echo(f"{kind}: {time.perf_counter() - start:.1f} s (generating, segmenting, scoring, preview)")
    echo(f"\nFiles in {out_dir.resolve()}:")
    for kind, run in runs.items():
        for role, path in run["files"].items():
            echo(f"  {kind:<10} {role:<11} {path}")
    echo("\nOpen them in QGIS: drag the .tif, then the *_pointsam.gpkg (layers instances, boxes, bboxes, skipped)\n"
         "and *_truth.gpkg onto the map; or Layer > Add Layer > Add Vector Layer.")
    return runs
