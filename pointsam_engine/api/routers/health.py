"""``GET /v1/health``: the engine's version, model, device and runtime."""

from __future__ import annotations

import sys

from fastapi import APIRouter

from ... import __version__
from .. import schemas
from ..engine import EngineDep
from ..errors import COMMON

router = APIRouter()


@router.get("/v1/health", response_model=schemas.Health, responses=COMMON)
def health(engine: EngineDep):
    from ...sam.model import runtime

    return schemas.Health(version=__version__, device=engine.model.device, model=engine.model.label,
                          precision=engine.model.precision, python=sys.executable, **runtime())
