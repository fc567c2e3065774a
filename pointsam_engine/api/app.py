"""The FastAPI app: loaded models shared by the interactive path and the job queue, every request guarded.

:class:`Engine` holds the state (model pool, embedding cache, click segmenter, job runner);
:func:`create_app` wires routes, the error mapping and :class:`Guard` (token, Host header, body size).
"""

from __future__ import annotations

import hmac
import json
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Iterable, Optional, Sequence

import shapely
import torch
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..config import SegmentConfig
from ..errors import OptionError, OutputError, PointSamError, PointsError
from ..jobs import JobRunner, TooLateToCancel
from ..output import OutsideOutputRoot
from . import model_routes, schemas

MAX_BODY_BYTES = 8 * 2**20
_STATUS = {OutsideOutputRoot: 403, OutputError: 409, TooLateToCancel: 409}  # other engine errors are bad input: 422


class Engine:
    """What the server keeps between requests: the loaded models, their embedding cache, the click path and
    the jobs. ``adapter_dirs`` are folders, besides the model folders, whose adapters ``/v1/models`` lists."""

    def __init__(self, config: SegmentConfig, model=None, adapter_dirs: Sequence[str] = (), max_parallel: int = 1,
                 output_root: Optional[str] = None):
        import threading

        from ..interactive import ClickSegmenter
        from ..sam.cache import EmbeddingCache
        from .models import ModelPool

        self.config, self.adapter_dirs, self.output_root = config, tuple(adapter_dirs), output_root
        # clicks that may run the encoder at once; the rest wait their turn (each pass holds hundreds of MB)
        self.click_slots = threading.BoundedSemaphore(max_parallel)
        self.models = ModelPool(config, model)
        self.cache = EmbeddingCache(config.cache_mb, config.cache_dir)  # keys name the model: shared safely
        self.clicks = ClickSegmenter(self.predictor(), config)
        self.jobs = JobRunner()

    @property
    def model(self):
        """The model the server was started with (requests that name no model use it)."""
        return self.models.default

    def predictor(self, model=None):
        """A predictor of its own (one chip at a time) that shares ``model``'s weights (default: the server's)
        and the embedding cache."""
        from ..sam.predict import ChipPredictor

        return ChipPredictor(model or self.model, self.cache, self.config.decoder_batch)

    def check_output(self, path, option: str = "output") -> None:
        """Refuse a job's output outside ``--output-root`` (when the server was given one)."""
        if self.output_root is not None:
            from ..output import check_inside

            check_inside(path, self.output_root, option)

    def close(self) -> None:
        self.jobs.shutdown()


def openapi_schema() -> dict:
    """The API's OpenAPI document (no model is loaded)."""
    return create_app(None, "unused").openapi()


def create_app(engine: Optional[Engine], token: str, allowed_hosts: Iterable[str] = ("127.0.0.1", "localhost", "::1"),
               max_body: int = MAX_BODY_BYTES) -> FastAPI:
    """The API under ``/v1``; every request needs ``Authorization: Bearer <token>``."""

    @asynccontextmanager
    async def lifespan(_app):
        yield
        if engine is not None:
            engine.close()  # cancels running jobs; atomic writes leave no partial output

    app = FastAPI(title="PointSAM engine", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/v1/openapi.json",
                  description="Local API of the PointSAM engine: click-by-click segmentation and background jobs.")
    _add_error_handlers(app)
    _add_routes(app, engine)
    app.include_router(model_routes.router(engine))
    app.add_middleware(Guard, token=token, allowed_hosts=allowed_hosts, max_body=max_body)
    return app


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PointSamError)
    async def engine_error(_request, exc: PointSamError):
        status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 422)
        return _error(status, type(exc).__name__, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        if isinstance(exc.__cause__, _BodyTooLarge):  # a chunked body over the cap, found while reading it
            return _error(413, "BodyTooLarge", "request body over the size limit; send paths, not data")
        names = {400: ("BadRequest", "the request body cannot be read as JSON (not UTF-8, nested too deeply or cut "
                                     "short); send one JSON object"),
                 404: ("NotFound", "no such route; see /v1/openapi.json for the routes"),
                 405: ("MethodNotAllowed", "this route does not take that method; see /v1/openapi.json")}
        code, message = names.get(exc.status_code, (f"HTTP{exc.status_code}", str(exc.detail)))
        if exc.status_code not in names and isinstance(exc.detail, str):
            message = exc.detail
        return JSONResponse({"error": code, "message": message}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
        return _error(422, "InvalidRequest", f"{where}: {first.get('msg', 'invalid')}; see /v1/openapi.json")


_OUTSIDE_ROOT = {403: {"model": schemas.ErrorBody, "description": "The output is outside --output-root."}}
_ERRORS = {422: {"model": schemas.ErrorBody, "description": "Bad input; the message says what to change."},
           401: {"model": schemas.ErrorBody, "description": "Missing or wrong token."}}


def _add_routes(app: FastAPI, engine: Engine) -> None:
    @app.get("/v1/health", response_model=schemas.Health, responses=_ERRORS)
    def health():
        return schemas.Health(version=__version__, device=engine.model.device, model=engine.model.label,
                              precision=engine.model.precision,
                              torch=torch.__version__, python=sys.executable,
                              gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)

    @app.get("/v1/models", response_model=schemas.Models, responses=_ERRORS)
    def models():
        return _models(engine)

    @app.post("/v1/predict", response_model=schemas.PredictResponse, responses=_ERRORS)
    def predict(body: schemas.PredictRequest):
        start = time.perf_counter()
        model = engine.models.get(body.model, body.adapter)
        with engine.click_slots:
            r = engine.clicks.predict(body.raster, body.positive, body.negative, crs=body.crs, out_crs=body.out_crs,
                                      predictor=engine.predictor(model), box=body.box, **body.engine_options())
        props = {"score": r.score, "area_m2": r.area_m2, "length_m": r.length_m, "width_m": r.width_m,
                 "angle_deg": r.angle_deg, "model": model.label}
        return schemas.PredictResponse(
            object={"type": "Feature", "geometry": shapely.geometry.mapping(r.polygon), "properties": props},
            box=shapely.geometry.mapping(r.box), bbox=shapely.geometry.mapping(r.bbox), crs=r.crs.to_string(),
            encoded=r.encoded, chip=list(r.chip), seconds=round(time.perf_counter() - start, 4))

    @app.post("/v1/prefetch", response_model=schemas.PrefetchResponse, responses=_ERRORS)
    def prefetch(body: schemas.PrefetchRequest):
        start = time.perf_counter()
        predictor = engine.predictor(engine.models.get(body.model, body.adapter))
        with engine.click_slots:
            encoded = engine.clicks.prefetch(body.raster, body.point, crs=body.crs, predictor=predictor,
                                             **body.engine_options())
        return schemas.PrefetchResponse(encoded=encoded, seconds=round(time.perf_counter() - start, 4))

    @app.post("/v1/jobs/segment", response_model=schemas.JobView, status_code=202,
              responses={**_ERRORS, **_OUTSIDE_ROOT,
                         409: {"model": schemas.ErrorBody, "description": "The output GeoPackage already "
                                          "has the run's layers (and overwrite is false), or is not a GeoPackage."}})
    def segment_job(body: schemas.SegmentJobRequest):
        job = engine.jobs.submit("segment", _segment_work(engine, body))
        return job.to_dict()

    @app.post("/v1/jobs/train", response_model=schemas.JobView, status_code=202,
              responses={**_ERRORS, **_OUTSIDE_ROOT,
                         409: {"model": schemas.ErrorBody, "description": "The adapter exists."}})
    def train_job(body: schemas.TrainJobRequest):
        job = engine.jobs.submit("train", _train_work(engine, body))
        return job.to_dict()

    @app.post("/v1/evaluate", response_model=schemas.Evaluation, responses=_ERRORS)
    def evaluate(body: schemas.EvaluateRequest):
        from ..evaluate import check_inputs, evaluate_files

        paths = dict(raster=body.raster, truth_layer=body.truth_layer, points_layer=body.points_layer,
                     pred_layer=body.pred_layer)
        check_inputs(body.pred, body.truth, body.points, **paths)
        return evaluate_files(body.pred, body.truth, body.points, **paths)

    @app.get("/v1/jobs", response_model=schemas.JobList, responses=_ERRORS)
    def list_jobs():
        return {"jobs": [job.to_dict() for job in engine.jobs.list()]}

    @app.get("/v1/jobs/{job_id}", response_model=schemas.JobView,
             responses={**_ERRORS, 404: {"model": schemas.ErrorBody, "description": "No such job."}})
    def get_job(job_id: str):
        job = engine.jobs.get(job_id)
        return job.to_dict() if job else _error(404, "NoSuchJob", f"no job {job_id}; list jobs with GET /v1/jobs")

    @app.delete("/v1/jobs/{job_id}", response_model=schemas.JobView,
                responses={**_ERRORS, 404: {"model": schemas.ErrorBody, "description": "No such job."},
                           409: {"model": schemas.ErrorBody, "description": "Too late: the job is writing its "
                                                                             "output and finishes."}})
    def cancel_job(job_id: str):
        job = engine.jobs.cancel(job_id)  # 409 (TooLateToCancel) once the job is writing its output
        return job.to_dict() if job else _error(404, "NoSuchJob", f"no job {job_id}; list jobs with GET /v1/jobs")


def _models(engine: Engine) -> schemas.Models:
    from ..catalog import download_dir
    from .models import adapter_folders, available_adapters, available_models

    m = engine.model
    loaded = schemas.ModelInfo(name=m.name, loaded=True, label=m.label, sha256=m.sha256, model_type=m.model_type,
                               image_size=m.image_size, adapter=m.adapter)
    return schemas.Models(loaded=loaded, available=available_models(engine.models),
                          adapters=available_adapters(adapter_folders(engine.adapter_dirs)),
                          catalog=model_routes.catalog_entries(), model_dir=str(download_dir()))


def _segment_work(engine: Engine, body: schemas.SegmentJobRequest):
    """Check the request now (so bad input answers 4xx at once), and return the job's work."""
    from ..pipeline import check_segment_inputs

    cfg = body.config(engine.config)
    engine.check_output(body.output)
    if (body.points is None) == (body.points_geojson is None):
        raise PointsError("give the points either as 'points' (a file path) or as 'points_geojson', not both or neither")
    check_segment_inputs(body.raster, body.points, body.output, cfg)
    predictor = engine.predictor(engine.models.get(body.model, body.adapter))  # loads a new model: after cheap checks
    inline = _inline_points(body.points_geojson, body.points_crs) if body.points_geojson is not None else None

    def work(progress, cancel):
        from ..pipeline import segment

        try:
            result = segment(body.raster, inline.name if inline else body.points, body.output, cfg,
                             progress=progress, cancel=cancel, predictor=predictor)
        finally:
            if inline:
                inline.cleanup()
        return {"output": str(result.output), "report": json.loads(json.dumps(result.report, default=str))}

    return work


def _train_work(engine: Engine, body: schemas.TrainJobRequest):
    """The train job from the ``pointsam.jobs`` entry point (``training``), on ``body.model`` or the server's base."""
    from importlib.metadata import entry_points

    from ..sam.model import resolve_model_path
    from .models import check_path

    found = [e for e in entry_points(group="pointsam.jobs") if e.name == "train"]
    try:
        make_work = found[0].load() if found else None
    except ImportError as exc:
        raise OptionError(f"training is not installed here ({exc.name} missing); install pointsam[train]") from None
    if make_work is None:
        raise OptionError("training is not installed here; install pointsam[train] in the engine's environment")
    engine.check_output(body.output)
    options = body.model_dump()
    options["model"] = body.model if body.model is not None else engine.config.model
    if options["model"] is not None:
        check_path("model", options["model"])
    resolve_model_path(options["model"])  # a wrong name answers 422 now, not as a failed job
    return make_work(options)


class _InlinePoints:
    def __init__(self, folder: tempfile.TemporaryDirectory, name: str):
        self._folder, self.name = folder, name

    def cleanup(self) -> None:
        self._folder.cleanup()


def _inline_points(collection: dict, crs: Optional[str]) -> _InlinePoints:
    """Write inline GeoJSON points to a temporary GeoPackage the pipeline reads like any point layer."""
    import geopandas as gpd

    try:
        features = collection["features"]
        frame = gpd.GeoDataFrame.from_features(features, crs=crs or "EPSG:4326")
    except Exception as exc:
        raise PointsError(f"points_geojson is not a GeoJSON FeatureCollection of points ({type(exc).__name__}); "
                          "give {'type': 'FeatureCollection', 'features': [...]}") from None
    if frame.empty or not (frame.geom_type == "Point").all():
        raise PointsError("points_geojson must hold at least one feature, all of them Points")
    folder = tempfile.TemporaryDirectory(prefix="pointsam-points-")
    path = Path(folder.name) / "points.gpkg"
    frame.to_file(path, layer="points")
    return _InlinePoints(folder, str(path))


class Guard:
    """ASGI middleware: Host header, bearer token (constant-time), body size cap; answers errors as JSON."""

    def __init__(self, app, token: str, allowed_hosts: Iterable[str], max_body: int):
        self.app, self.token, self.max_body = app, token.encode(), max_body
        self.allowed = {h.lower().strip("[]") for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(headers)
        if refusal:
            return await refusal(scope, receive, send)
        received = 0

        async def capped_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, capped_receive, send)
        except _BodyTooLarge:
            await _error(413, "BodyTooLarge", f"request body over {self.max_body} bytes; send paths, not data")(scope, receive, send)

    def _refusal(self, headers: dict) -> Optional[JSONResponse]:
        if _host_name(headers.get("host", "")) not in self.allowed:
            return _error(400, "HostNotAllowed", "the Host header names another host; call the engine by the address it printed")
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token):
            return _error(401, "Unauthorized", "missing or wrong token; send 'Authorization: Bearer <token>' "
                                              "with the token pointsam serve printed")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return _error(413, "BodyTooLarge", f"request body over {self.max_body} bytes; send paths, not data")
        return None


class _BodyTooLarge(Exception):
    pass


def _host_name(host: str) -> str:
    """``example.org:8080`` -> ``example.org``; ``[::1]:8080`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


