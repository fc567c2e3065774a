"""``batch_segment()``: one point layer over many rasters on Dask distributed, resumable, one merged GeoPackage.

Steps: check the inputs (nothing is written on bad input) -> plan (footprints, one raster per object, tasks) ->
run the unfinished tasks on a Dask cluster (a LocalCluster of ``workers`` processes, or the scheduler at
``scheduler``), each writing its own result into ``OUT.work/`` -> merge them into ``OUT.gpkg``.

Ctrl-C (or ``cancel``) cancels the pending tasks and keeps the finished ones for ``resume``. A worker that dies
has its task run again elsewhere; a task whose worker dies twice, or that fails, lands in ``failed``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import geopandas as gpd
import pandas as pd

from .. import __version__
from ..chip_loop import check_cancel
from ..config import BATCH, FAILED, SegmentConfig
from ..errors import OptionError, PointsError, RasterError
from ..output import check_distinct, check_file_target, check_folder, check_target, write_geopackage
from ..points import SAME_AREA_FIX
from .assign import Plan, plan_tasks
from .merge import LAYERS, merge, read_task_layers
from .sources import list_rasters
from .tasks import finished, task_files

ProgressCallback = Callable[[float, str], None]
BATCH_LAYERS = (*LAYERS, FAILED)


@dataclass
class BatchResult:
    """What :func:`batch_segment` returns: the merged layers, the report, the file written."""

    layers: Dict[str, gpd.GeoDataFrame]
    report: dict
    output: Optional[Path] = None


def work_folder(output) -> Path:
    """The work folder beside ``output``: ``OUT.gpkg`` -> ``OUT.work/``."""
    output = Path(output)
    return output.with_name(output.stem + BATCH.work_suffix)


def check_batch_inputs(points, output, rasters: Sequence[str], cfg: SegmentConfig, *, resume: bool = False,
                       workers: Optional[int] = None, scheduler: Optional[str] = None,
                       reports: Optional[Dict[str, object]] = None) -> List[str]:
    """Refuse, before any work, what would fail later or lose a file; returns the raster paths. ``reports``: the
    JSON reports to write, by option (``{"--report": path}``), checked as ``pointsam segment`` checks them."""
    if workers is not None and scheduler:
        raise OptionError("give --workers (a local cluster) or --scheduler (an existing one), not both")
    if scheduler and "://" not in scheduler and ":" not in scheduler:
        raise OptionError(f"--scheduler {scheduler!r} is not an address; give one like tcp://10.0.0.5:8786")
    paths = list_rasters(rasters)
    reports = {option: path for option, path in (reports or {}).items() if path}
    check_distinct({"-o": output, **reports}, {"POINTS": points, **{f"raster {p}": p for p in paths}})
    check_target(output, cfg.overwrite, layers=BATCH_LAYERS)
    for option, path in reports.items():
        check_file_target(path, cfg.overwrite, option)
    if not Path(str(points)).is_file():
        what = "is a folder" if Path(str(points)).is_dir() else "does not exist"
        raise PointsError(f"point layer {points} {what}; give the path of a point file (GeoPackage, Shapefile, GeoJSON)")
    work = work_folder(output)
    if work.exists():
        check_folder(work, "the work folder")
        if not resume and any(p.name != BATCH.worker_log for p in work.iterdir()):
            raise OptionError(f"{work} holds the tasks of an earlier run; pass --resume to go on with them, "
                              "or delete that folder to start again")
    return paths


def batch_segment(points, output, rasters: Sequence[str], config: Optional[SegmentConfig] = None, *,
                  workers: Optional[int] = None, scheduler: Optional[str] = None, resume: bool = False,
                  progress: Optional[ProgressCallback] = None, cancel=None, echo: Callable[[str], None] = lambda s: None,
                  band_px: int = BATCH.band_px) -> BatchResult:
    """Segment the objects of ``points`` over ``rasters`` (folders, globs, list files, mosaic VRTs, files).

    Args:
        points: path of an OGR point layer; each object goes to one raster (:mod:`.assign`'s rule).
        output: the merged GeoPackage to write (layers instances, boxes, bboxes, skipped, failed).
        rasters: ``--rasters`` specs (:func:`~.sources.list_rasters`).
        config: a :class:`SegmentConfig` (as ``pointsam segment``'s).
        workers: worker processes of a LocalCluster (default :data:`BATCH`); ``scheduler``: an existing one's address.
        resume: keep the tasks finished in ``OUT.work/`` by an earlier run; run only the others.
        progress: ``progress(fraction, stage)``; cancel: an Event or a callable (raises :class:`Cancelled`).
        echo: a line to show the user (the dashboard link).
        band_px: rasters taller than this (working pixels) become bands of this many rows, a task each.
    """
    cfg = config or SegmentConfig()
    notify = progress or (lambda fraction, stage: None)
    start = time.perf_counter()
    paths = check_batch_inputs(points, output, rasters, cfg, resume=resume, workers=workers, scheduler=scheduler)
    notify(0.0, "reading footprints")
    plan = plan_tasks(points, paths, cfg, band_px)
    check_runnable(plan, points)
    work = work_folder(output)
    work.mkdir(exist_ok=True)
    outcomes = {t.id: finished(work, t) for t in plan.tasks} if resume else {}
    outcomes = {k: v for k, v in outcomes.items() if v is not None}
    reused = len(outcomes)
    pending = [t for t in plan.tasks if t.id not in outcomes]
    check_cancel(cancel)
    if pending:
        from .cluster import run_on_dask

        run_on_dask(pending, plan, cfg, work, outcomes, workers=workers, scheduler=scheduler, notify=notify,
                    cancel=cancel, echo=echo, total=len(plan.tasks))
    notify(0.92, "merging")
    result = _merge_and_write(plan, outcomes, work, output, cfg, cancel)
    result.report.update({"tasks": len(plan.tasks), "reused": reused, "ran": len(plan.tasks) - reused,
                          "seconds": round(time.perf_counter() - start, 3)})
    if not result.report["failed"]:
        shutil.rmtree(work, ignore_errors=True)
    notify(1.0, "done")
    return result


def check_runnable(plan: Plan, points) -> None:
    """Refuse, before anything is written, a batch that has no task to run: no raster could be read, or no
    object lies on one (the one-line errors ``pointsam segment`` gives for one raster)."""
    if plan.tasks:
        return
    if not plan.footprints:
        _, why = plan.failed[0]
        raise RasterError(why if len(plan.failed) == 1 else
                          f"none of the {len(plan.failed)} rasters of --rasters can be read; the first: {why}")
    unread = f" ({len(plan.failed)} other(s) could not be read, the first: {plan.failed[0][1]})" if plan.failed else ""
    raise PointsError(f"no point of {points} lies on data of the {len(plan.footprints)} readable raster(s) of "
                      f"--rasters{unread}; {SAME_AREA_FIX}")


def _merge_and_write(plan: Plan, outcomes: dict, work: Path, output, cfg: SegmentConfig, cancel) -> BatchResult:
    out_crs = cfg.out_crs or plan.crs
    done = [t for t in plan.tasks if outcomes.get(t.id) and "failed" not in outcomes[t.id]]
    failed = [(t.id, t.raster, outcomes[t.id]["failed"]) for t in plan.tasks
              if outcomes.get(t.id) and "failed" in outcomes[t.id]]
    failed = [(Path(r).stem, r, why) for r, why in plan.failed] + failed
    lost_fids = [f for t in plan.tasks if outcomes.get(t.id) and "failed" in outcomes[t.id] for f in t.fids]
    skipped = _with_reason(plan, lost_fids, "its raster's task failed (see the failed layer)", cfg)
    layers, settled = merge([read_task_layers(task_files(work, t)[0], out_crs) for t in done], [t.raster for t in done],
                            skipped, failed, plan, cfg, out_crs)
    reports = [outcomes[t.id]["report"] for t in done]
    report = {"rasters": len(plan.footprints) + len(plan.failed),
              "instances": len(layers["instances"]), "skipped": len(layers["skipped"]), "failed": len(layers[FAILED]),
              "objects": sum(r["objects"] for r in reports),
              "encoder_passes": sum(r["encoder_passes"] for r in reports),
              "settled_across_edges": settled,
              "clicks_not_held": _clicks_not_held(layers["instances"]),
              "crs": gpd.GeoSeries([], crs=out_crs).crs.to_string(),
              "model_loads": sum(1 for _ in {o["worker"]: o["loads"] for t in done
                                             for o in [outcomes[t.id]] if "worker" in o}),
              "version": __version__}
    check_cancel(cancel)
    commit = getattr(cancel, "commit", None)
    written = write_geopackage(layers, output, overwrite=cfg.overwrite, commit=commit,
                               metadata={"pointsam_version": __version__, "pointsam_batch_report": report})
    report["output"] = str(written)
    return BatchResult(layers, report, written)


def _clicks_not_held(instances: gpd.GeoDataFrame) -> int:
    """Objects whose mask missed one of their clicks (as ``pointsam segment``'s report counts them)."""
    return int((~instances["holds_click"].astype(bool)).sum()) if "holds_click" in instances else 0


def _with_reason(plan: Plan, fids: List[int], reason: str, cfg: SegmentConfig) -> gpd.GeoDataFrame:
    from .assign import _skipped

    if not fids:
        return plan.skipped
    extra = _skipped(plan.points, fids, reason, cfg)
    return gpd.GeoDataFrame(pd.concat([plan.skipped, extra], ignore_index=True), crs=plan.skipped.crs)


def cancelled_message(output) -> str:
    """What the user is told after Ctrl-C: the finished tasks are kept."""
    return (f"interrupted; the finished tasks are kept in {work_folder(output)}: run the same command with --resume "
            "to do only the others")

