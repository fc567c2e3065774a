"""``POST /v1/jobs/train``: fine-tune an adapter as a job (needs ``pointsam[train]`` in the engine's environment)."""

from __future__ import annotations

from fastapi import APIRouter

from .. import schemas
from ..engine import EngineDep
from ..errors import COMMON, OUTSIDE_ROOT
from ..job_work import train_work

router = APIRouter()

_ADAPTER_EXISTS = {409: {"model": schemas.ErrorBody, "description": "The adapter exists."}}


@router.post("/v1/jobs/train", response_model=schemas.JobView, status_code=202,
             responses={**COMMON, **OUTSIDE_ROOT, **_ADAPTER_EXISTS})
def train_job(body: schemas.TrainJobRequest, engine: EngineDep):
    return engine.jobs.submit("train", train_work(engine, body)).to_dict()
