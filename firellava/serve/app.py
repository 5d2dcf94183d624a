"""The OpenAI-compatible server: `create_app` assembles state, routes and error handlers; `run_server` loads the
engine and serves. Requests are parsed by hand (size-capped body, then JSON, then the schema) so that every
failure is an OpenAI-shaped error with the right status, and never a traceback."""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from firellava.serve.engines import ServeEngine
from firellava.serve.errors import APIError, error_body
from firellava.serve.routes import router
from firellava.serve.settings import ServerSettings
from firellava.serve.state import ServerState

log = logging.getLogger("serve")


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = "not_found" if exc.status_code == 404 else None
    return JSONResponse(error_body(exc.status_code, str(exc.detail), code=code), status_code=exc.status_code)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s", request.url.path)
    return JSONResponse(error_body(500, "internal server error", code="internal_error"), status_code=500)


def create_app(settings: ServerSettings, engine: ServeEngine) -> FastAPI:
    state = ServerState.create(settings, engine)
    app = FastAPI(
        title="FireLLaVA OpenAI-compatible server",
        lifespan=lambda _app: state.running(),
        docs_url=None,
        redoc_url=None,
    )
    app.state.server = state
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal)
    app.include_router(router)
    return app


def run_server(settings: ServerSettings) -> None:
    """Load the engine, then serve until interrupted (uvicorn handles SIGINT/SIGTERM gracefully)."""
    import uvicorn

    from firellava.serve.engines import build_serve_engine

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    start = time.perf_counter()
    engine = build_serve_engine(settings)
    log.info(
        "engine %s (%s) ready in %.1fs",
        settings.model_name,
        settings.engine.backend,
        time.perf_counter() - start,
    )
    app = create_app(settings, engine)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, timeout_graceful_shutdown=5
    )
