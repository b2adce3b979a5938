"""The HTTP routes (FastAPI): OpenAI's /v1/chat/completions, /v1/completions and /v1/models, our /v1/sql and
/v1/databases, and /health; the API key, limits, one-line errors and one log line per request.

Every error a client can cause is a 4xx with OpenAI's error body and a one-line message; anything else is a 500
with one line (logged), never a traceback on the wire. With an API key, every route but /health needs
`Authorization: Bearer KEY` (what the `openai` client sends).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from text2sql.errors import UserError
from text2sql.serve import wire
from text2sql.serve.service import ApiError, Service

log = logging.getLogger("text2sql.serve")


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _validation_message(err: RequestValidationError) -> str:
    first = (err.errors() or [{}])[0]
    if first.get("type") == "json_invalid":
        return "the body is not valid JSON"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    if first.get("type") == "missing":
        return f"missing field: {where}"
    if first.get("type") == "extra_forbidden":
        return f"unknown field: {where}"
    return _one_line(f"{where}: {first.get('msg', 'invalid value')}" if where else first.get("msg", "invalid"))


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    return JSONResponse(wire.error_body(_one_line(message), kind, code), status_code=status)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return _error(err.status, err.message, err.kind, err.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        return _error(400, _validation_message(err))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return _error(err.status_code, str(err.detail), kind)

    @app.exception_handler(UserError)
    async def user_error(request: Request, err: UserError):
        return _error(400, str(err))

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception):
        log.error("internal error on %s %s: %s: %s", request.method, request.url.path, type(err).__name__,
                  _one_line(str(err)))
        return _error(500, f"internal error: {type(err).__name__}", "server_error")


def _install_middleware(app: FastAPI, service: Service) -> None:
    @app.middleware("http")
    async def limit_and_log(request: Request, call_next):
        start = time.perf_counter()
        service.http_requests += 1
        service.in_flight += 1
        try:
            response = await _limited(request, call_next, service)
        finally:
            service.in_flight -= 1
        batch = getattr(request.state, "batch_size", None)
        log.info("%s %s %d %.3f s%s", request.method, request.url.path, response.status_code,
                 time.perf_counter() - start, f" batch {batch}" if batch else "")
        return response


async def _limited(request: Request, call_next, service: Service):
    """The response within the body size and time limits (a 413 or 504 otherwise)."""
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > service.limits.max_body_bytes):
        return _error(413, f"body above the limit of {service.limits.max_body_bytes} bytes")
    try:
        return await asyncio.wait_for(call_next(request), service.limits.request_timeout)
    except (asyncio.TimeoutError, TimeoutError):
        return _error(504, f"no answer within the request timeout of {service.limits.request_timeout:g} s "
                      "(text2sql serve --request-timeout)", "timeout_error")
    except Exception as err:  # noqa: BLE001 - one line on the wire and in the log, the server lives
        log.error("internal error on %s %s: %s: %s", request.method, request.url.path, type(err).__name__,
                  _one_line(str(err)))
        return _error(500, f"internal error: {type(err).__name__}", "server_error")


def _auth(api_key: str | None):
    async def check(request: Request) -> None:
        if not api_key:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send Authorization: Bearer KEY", "authentication_error",
                           "invalid_api_key")
    return check


def create_app(service: Service, api_key: str | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="text2sql serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    _install_errors(app)
    _install_middleware(app, service)
    guarded = [Depends(_auth(api_key))]

    @app.get("/health")
    async def health():
        return service.health()

    @app.get("/v1/models", dependencies=guarded)
    async def models():
        return wire.models_response(service.spec.name, service.started)

    @app.get("/v1/databases", dependencies=guarded)
    async def databases():
        return {"object": "list", "data": [{"id": db_id, "object": "database"} for db_id in service.databases.ids()]}

    from text2sql.serve.routes import add_routes

    add_routes(app, service, guarded)
    return app
