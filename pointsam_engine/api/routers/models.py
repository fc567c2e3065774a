"""Models: what the server has loaded and can load (``GET /v1/models``), and the official SAM checkpoints:
download as a job, verify, remove (:mod:`pointsam_engine.download`)."""

from __future__ import annotations

from typing import List

from fastapi import APIRouter

from .. import schemas
from ..engine import EngineDep
from ..errors import COMMON
from ..job_work import pull_work

router = APIRouter()

_CHECKPOINT_ERRORS = {422: {"model": schemas.ErrorBody, "description": "Not an official checkpoint, or not installed; "
                                                                       "the message says what to do."},
                      401: {"model": schemas.ErrorBody, "description": "Missing or wrong token."}}


@router.get("/v1/models", response_model=schemas.Models, responses=COMMON)
def models(engine: EngineDep):
    from ...catalog import download_dir
    from ..models import adapter_folders, available_adapters, available_models

    m = engine.model
    loaded = schemas.ModelInfo(name=m.name, loaded=True, label=m.label, sha256=m.sha256, model_type=m.model_type,
                               image_size=m.image_size, adapter=m.adapter)
    return schemas.Models(loaded=loaded, available=available_models(engine.models),
                          adapters=available_adapters(adapter_folders(engine.adapter_dirs)),
                          catalog=catalog_entries(), model_dir=str(download_dir()))


@router.post("/v1/jobs/pull", response_model=schemas.JobView, status_code=202, responses=_CHECKPOINT_ERRORS)
def pull_job(body: schemas.ModelName, engine: EngineDep):
    """Download an official checkpoint into the model folder, sha256-verified before it is moved there.
    Its result: ``{"name", "path", "sha256", "downloaded"}``; cancel keeps the partial file for the next pull."""
    return engine.jobs.submit("pull", pull_work(body.name)).to_dict()


@router.post("/v1/models/verify", response_model=schemas.VerifyResult, responses=_CHECKPOINT_ERRORS)
def verify_model(body: schemas.ModelName):
    """Hash the installed file of an official checkpoint against its official sha256."""
    from ...download import verify

    return verify(body.name)


@router.delete("/v1/models/{name}", response_model=schemas.RemoveResult, responses=_CHECKPOINT_ERRORS)
def remove_model(name: str):
    """Delete the installed file of an official checkpoint (and any partial download of it)."""
    from ...download import remove

    return remove(name)


def catalog_entries() -> List[dict]:
    """Each official checkpoint with where it is installed and its sha256 state. A file not verified yet (put
    there by hand) is hashed once per server, as the list of available models hashes it anyway."""
    from ...catalog import CATALOG, installed_path
    from ...download import record_sha256, recorded_sha256, state
    from ..models import model_sha256

    entries = []
    for entry in CATALOG.values():
        path = installed_path(entry.name)
        if path is not None and path.stat().st_size == entry.size and recorded_sha256(path) is None:
            record_sha256(path, model_sha256(path))
        entries.append({"name": entry.name, "file": entry.file, "url": entry.url, "size": entry.size,
                        "sha256": entry.sha256, "installed": path is not None,
                        "path": str(path) if path else None, "sha256_state": state(entry, path)})
    return entries
