"""The FastAPI app factory: :func:`create_app` assembles the routers, the error mapping and the guard.

The state lives in :class:`~.engine.Engine` (routes take it through :func:`~.engine.get_engine`), the routes in
:mod:`.routers`, the error answers in :mod:`.errors`, the token/Host/body-size guard in :mod:`.guard`, and what
a job request is checked for before it is queued in :mod:`.job_work`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Iterable, Optional

from fastapi import FastAPI

from .. import __version__
from .engine import Engine
from .errors import add_error_handlers
from .guard import LOOPBACK_HOSTS, MAX_BODY_BYTES, Guard
from .routers import ROUTERS


def create_app(engine: Optional[Engine], token: str, allowed_hosts: Iterable[str] = LOOPBACK_HOSTS,
               max_body: int = MAX_BODY_BYTES) -> FastAPI:
    """The API under ``/v1`` on ``engine``; every request needs ``Authorization: Bearer <token>`` and a Host
    in ``allowed_hosts``, and a body of at most ``max_body`` bytes. The app closes the engine when it stops."""

    @asynccontextmanager
    async def lifespan(served: FastAPI):
        yield
        if served.state.engine is not None:
            served.state.engine.close()  # cancels running jobs; atomic writes leave no partial output

    app = FastAPI(title="PointSAM engine", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/v1/openapi.json",
                  description="Local API of the PointSAM engine: click-by-click segmentation and background jobs.")
    app.state.engine = engine
    add_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(Guard, token=token, allowed_hosts=allowed_hosts, max_body=max_body)
    return app


def openapi_schema() -> dict:
    """The API's OpenAPI document (no model is loaded)."""
    return create_app(None, "unused").openapi()
