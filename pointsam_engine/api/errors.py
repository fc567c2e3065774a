"""The error mapping: every error the API answers, the engine's and FastAPI's own, is ``{"error", "message"}``.

An engine error (:class:`~pointsam_engine.errors.PointSamError`) is bad input (422) unless :data:`STATUS`
says otherwise; FastAPI's 400/404/405 and its validation errors (422) get a one-line message naming the fix.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import OutputError, PointSamError
from ..jobs import TooLateToCancel
from ..output import OutsideOutputRoot
from . import schemas

STATUS = {OutsideOutputRoot: 403, OutputError: 409, TooLateToCancel: 409}
"""Engine errors that are not plain bad input (422), by class; the first class the error is an instance of wins."""

_HTTP = {400: ("BadRequest", "the request body cannot be read as JSON (not UTF-8, nested too deeply or cut short); "
                             "send one JSON object"),
         404: ("NotFound", "no such route; see /v1/openapi.json for the routes"),
         405: ("MethodNotAllowed", "this route does not take that method; see /v1/openapi.json")}

COMMON = {422: {"model": schemas.ErrorBody, "description": "Bad input; the message says what to change."},
          401: {"model": schemas.ErrorBody, "description": "Missing or wrong token."}}
"""The error answers every route documents (OpenAPI ``responses``)."""

OUTSIDE_ROOT = {403: {"model": schemas.ErrorBody, "description": "The output is outside --output-root."}}
NO_SUCH_JOB = {404: {"model": schemas.ErrorBody, "description": "No such job."}}


class BodyTooLarge(Exception):
    """Raised by the guard while reading a (chunked) body that goes over the size limit."""


def error_response(status: int, code: str, message: str, headers=None) -> JSONResponse:
    """The API's error answer: ``{"error": code, "message": message}`` with ``status``."""
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def body_too_large(limit: int) -> JSONResponse:
    return error_response(413, "BodyTooLarge", f"request body over {limit} bytes; send paths, not data")


def no_such_job(job_id: str) -> JSONResponse:
    return error_response(404, "NoSuchJob", f"no job {job_id}; list jobs with GET /v1/jobs")


def add_error_handlers(app: FastAPI) -> None:
    """Answer engine errors, HTTP errors and invalid requests as ``{"error", "message"}``."""
    app.add_exception_handler(PointSamError, _engine_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)


async def _engine_error(_request: Request, exc: PointSamError) -> JSONResponse:
    status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 422)
    return error_response(status, type(exc).__name__, str(exc))


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if isinstance(exc.__cause__, BodyTooLarge):  # a chunked body over the cap, found while reading it
        return error_response(413, "BodyTooLarge", "request body over the size limit; send paths, not data")
    code, message = _HTTP.get(exc.status_code, (f"HTTP{exc.status_code}", str(exc.detail)))
    if exc.status_code not in _HTTP and isinstance(exc.detail, str):
        message = exc.detail
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":  # malformed JSON: a bad request, as a body that is not UTF-8
        at = next((f" (at character {part})" for part in first.get("loc", ())[1:] if isinstance(part, int)), "")
        return error_response(400, _HTTP[400][0], f"the request body is not JSON{at}; send one JSON object")
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    return error_response(422, "InvalidRequest", f"{where}: {first.get('msg', 'invalid')}; see /v1/openapi.json")
