"""Routes for the official SAM checkpoints: download as a job, verify, remove (:mod:`pointsam_engine.download`).

``GET /v1/models`` (in :mod:`.app`) lists them through :func:`catalog_entries`.
"""

from __future__ import annotations

from typing import List

from fastapi import APIRouter

from . import schemas

_ERRORS = {422: {"model": schemas.ErrorBody, "description": "Not an official checkpoint, or not installed; "
                                                            "the message says what to do."},
           401: {"model": schemas.ErrorBody, "description": "Missing or wrong token."}}


def catalog_entries() -> List[dict]:
    """Each official checkpoint with where it is installed and its sha256 state. A file not verified yet (put
    there by hand) is hashed once per server, as the list of available models hashes it anyway."""
    from ..catalog import CATALOG, installed_path
    from ..download import record_sha256, recorded_sha256, state
    from .models import model_sha256

    entries = []
    for entry in CATALOG.values():
        path = installed_path(entry.name)
        if path is not None and path.stat().st_size == entry.size and recorded_sha256(path) is None:
            record_sha256(path, model_sha256(path))
        entries.append({"name": entry.name, "file": entry.file, "url": entry.url, "size": entry.size,
                        "sha256": entry.sha256, "installed": path is not None,
                        "path": str(path) if path else None, "sha256_state": state(entry, path)})
    return entries


def router(engine) -> APIRouter:
    """The routes, on ``engine``'s job queue."""
    routes = APIRouter()

    @routes.post("/v1/jobs/pull", response_model=schemas.JobView, status_code=202, responses=_ERRORS)
    def pull_job(body: schemas.ModelName):
        """Download an official checkpoint into the model folder, sha256-verified before it is moved there.
        Its result: ``{"name", "path", "sha256", "downloaded"}``; cancel keeps the partial file for the next pull."""
        from ..catalog import checkpoint
        from ..download import pull

        name = checkpoint(body.name).name  # a wrong name answers 422 now, not as a failed job
        job = engine.jobs.submit("pull", lambda progress, cancel: pull(name, progress, cancel))
        return job.to_dict()

    @routes.post("/v1/models/verify", response_model=schemas.VerifyResult, responses=_ERRORS)
    def verify_model(body: schemas.ModelName):
        """Hash the installed file of an official checkpoint against its official sha256."""
        from ..download import verify

        return verify(body.name)

    @routes.delete("/v1/models/{name}", response_model=schemas.RemoveResult, responses=_ERRORS)
    def remove_model(name: str):
        """Delete the installed file of an official checkpoint (and any partial download of it)."""
        from ..download import remove

        return remove(name)

    return routes
