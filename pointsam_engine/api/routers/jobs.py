"""The job queue: list the jobs, follow one, cancel one (the routes that start jobs are with their concern)."""

from __future__ import annotations

from fastapi import APIRouter

from .. import schemas
from ..engine import EngineDep
from ..errors import COMMON, NO_SUCH_JOB, no_such_job

router = APIRouter()

_TOO_LATE = {409: {"model": schemas.ErrorBody, "description": "Too late: the job is writing its output and finishes."}}


@router.get("/v1/jobs", response_model=schemas.JobList, responses=COMMON)
def list_jobs(engine: EngineDep):
    return {"jobs": [job.to_dict() for job in engine.jobs.list()]}


@router.get("/v1/jobs/{job_id}", response_model=schemas.JobView, responses={**COMMON, **NO_SUCH_JOB})
def get_job(job_id: str, engine: EngineDep):
    job = engine.jobs.get(job_id)
    return job.to_dict() if job else no_such_job(job_id)


@router.delete("/v1/jobs/{job_id}", response_model=schemas.JobView, responses={**COMMON, **NO_SUCH_JOB, **_TOO_LATE})
def cancel_job(job_id: str, engine: EngineDep):
    job = engine.jobs.cancel(job_id)  # 409 (TooLateToCancel) once the job is writing its output
    return job.to_dict() if job else no_such_job(job_id)
