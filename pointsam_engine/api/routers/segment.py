"""Segmentation: a click (``/v1/predict``), encoding ahead of it (``/v1/prefetch``), a whole point layer as a
job (``/v1/jobs/segment``) or over many rasters
(``/v1/jobs/batch``), and scoring a segmentation against the truth (``/v1/evaluate``)."""

from __future__ import annotations

import time

import shapely
from fastapi import APIRouter

from .. import schemas
from ..engine import EngineDep
from ..errors import COMMON, OUTSIDE_ROOT
from ..job_work import batch_work, segment_work

router = APIRouter()

_OUTPUT_TAKEN = {409: {"model": schemas.ErrorBody, "description": "The output GeoPackage already has the run's layers "
                                                                  "(and overwrite is false), or is not a GeoPackage."}}


@router.post("/v1/predict", response_model=schemas.PredictResponse, responses=COMMON)
def predict(body: schemas.PredictRequest, engine: EngineDep):
    start = time.perf_counter()
    options = body.engine_options()
    model = engine.models.get(body.model, body.adapter, options["stretch"], options["sar_db"])
    with engine.click_slots:
        r = engine.clicks.predict(body.raster, body.positive, body.negative, crs=body.crs, out_crs=body.out_crs,
                                  predictor=engine.predictor(model), box=body.box, **options)
    props = {"score": r.score, "area_m2": r.area_m2, "length_m": r.length_m, "width_m": r.width_m,
             "angle_deg": r.angle_deg, "model": model.label}
    return schemas.PredictResponse(
        object={"type": "Feature", "geometry": shapely.geometry.mapping(r.polygon), "properties": props},
        box=shapely.geometry.mapping(r.box), bbox=shapely.geometry.mapping(r.bbox), crs=r.crs.to_string(),
        encoded=r.encoded, chip=list(r.chip), seconds=round(time.perf_counter() - start, 4))


@router.post("/v1/prefetch", response_model=schemas.PrefetchResponse, responses=COMMON)
def prefetch(body: schemas.PrefetchRequest, engine: EngineDep):
    start = time.perf_counter()
    options = body.engine_options()
    predictor = engine.predictor(engine.models.get(body.model, body.adapter, options["stretch"], options["sar_db"]))
    with engine.click_slots:
        encoded = engine.clicks.prefetch(body.raster, body.point, crs=body.crs, predictor=predictor, **options)
    return schemas.PrefetchResponse(encoded=encoded, seconds=round(time.perf_counter() - start, 4))


@router.post("/v1/jobs/segment", response_model=schemas.JobView, status_code=202,
             responses={**COMMON, **OUTSIDE_ROOT, **_OUTPUT_TAKEN})
def segment_job(body: schemas.SegmentJobRequest, engine: EngineDep):
    return engine.jobs.submit("segment", segment_work(engine, body)).to_dict()


@router.post("/v1/jobs/batch", response_model=schemas.JobView, status_code=202,
             responses={**COMMON, **OUTSIDE_ROOT, **_OUTPUT_TAKEN})
def batch_job(body: schemas.BatchJobRequest, engine: EngineDep):
    """``pointsam batch``: one point layer over many rasters on Dask, one merged GeoPackage."""
    return engine.jobs.submit("batch", batch_work(engine, body)).to_dict()


@router.post("/v1/evaluate", response_model=schemas.Evaluation, responses=COMMON)
def evaluate(body: schemas.EvaluateRequest):
    from ...evaluate import check_inputs, evaluate_files

    paths = dict(raster=body.raster, truth_layer=body.truth_layer, points_layer=body.points_layer,
                 pred_layer=body.pred_layer)
    check_inputs(body.pred, body.truth, body.points, **paths)
    return evaluate_files(body.pred, body.truth, body.points, **paths)
