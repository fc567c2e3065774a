"""The API's routes, one :class:`fastapi.APIRouter` per concern; :func:`~pointsam_engine.api.app.create_app`
includes them all. Every route takes the engine as ``engine: EngineDep``."""

from . import health, jobs, models, segment, train

ROUTERS = (health.router, models.router, segment.router, train.router, jobs.router)
