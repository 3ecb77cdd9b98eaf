"""OpenAI-compatible HTTP API: files, fine-tuning jobs, models, chat and text completions.

Every route needs ``Authorization: Bearer KEY``; every file, job and model belongs to the key's
organisation, and another organisation's id answers exactly like a missing one (404). Every
error, FastAPI's own request-validation errors included, has OpenAI's shape and a 4xx status for
bad input: malformed input is a 400, never a 422 or 500.

Routes live in serve/routes/ (one module per resource); this module builds the app.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from tunesmith.serve import openapi, web
from tunesmith.serve.errors import APIError, error_response, invalid_request
from tunesmith.serve.executors import FairExecutor
from tunesmith.serve.limits import BodyLimit, BodyTooLarge
from tunesmith.serve.redact import public
from tunesmith.serve.routes import embeddings, files, graders, inference, jobs, models
from tunesmith.serve.settings import ServeSettings
from tunesmith.serve.storage import Storage, collect_garbage, disk_full, insufficient_storage
from tunesmith.serve.store import Store

log = logging.getLogger("tunesmith.serve")


def create_app(settings: ServeSettings) -> FastAPI:
    from tunesmith.serve.inference import InferenceEngine
    from tunesmith.serve.jobs.supervisor import Worker

    store = Store(settings.home)
    # Blocking work runs in executors of its own, never in the pool that serves management routes.
    executors = {kind: FairExecutor(kind, limits.threads, limits.per_org) for kind, limits in settings.pools.items()}
    executors["inference"] = FairExecutor(
        "inference", settings.inference_threads, settings.max_inference_per_org, settings.inference_queue_timeout
    )
    worker = Worker(
        store,
        settings.trainer_command,
        settings.max_running,
        settings.poll_seconds,
        settings.train_overrides,
        validation=executors["validation"],
        max_steps=settings.max_job_steps,
        max_seconds=settings.max_job_seconds,
    )

    engine = InferenceEngine(max_adapters=settings.max_adapters, max_bases=settings.max_loaded_models)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store.remove_orphans()
        if settings.keep_failed_runs is not None:
            for path, size in collect_garbage(store, settings.keep_failed_runs):
                log.warning("retention: removed %s (%d bytes)", path, size)
        worker.start()
        try:
            yield
        finally:
            engine.close()
            worker.stop()
            for executor in executors.values():
                executor.shutdown()

    app = FastAPI(title="tunesmith", lifespan=lifespan)
    app.state.store, app.state.worker, app.state.settings = store, worker, settings
    app.state.engine, app.state.executors = engine, executors
    app.state.storage = Storage(store, settings.storage_quota, settings.max_files, settings.min_free_disk)
    app.add_middleware(BodyLimit, json_limit=settings.max_body_bytes, upload_limit=settings.max_upload_bytes)
    _install_error_handlers(app, settings)
    files.add_routes(app)
    jobs.add_routes(app)
    models.add_routes(app)
    inference.add_routes(app)
    embeddings.add_routes(app)
    graders.add_routes(app)
    web.add_routes(app)
    openapi.install(app)
    return app


def _install_error_handlers(app: FastAPI, settings: ServeSettings) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, error: APIError):
        # One place for every route's messages: a model's load error, an exporter's, name server paths.
        error.message = public(error.message, settings.home)
        return error_response(error)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(_: Request, error: BodyTooLarge):
        return error_response(error.error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError):
        return error_response(invalid_request(error.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        status = error.status_code
        code = {404: "not_found", 405: "method_not_allowed"}.get(status)
        message = "Unknown URL" if status == 404 else str(error.detail)
        headers = error.headers
        if status == 405:  # RFC 9110: Allow lists every method of the URL, not only those of one route
            matching = [r for r in app.router.routes if r.matches(request.scope)[0] != Match.NONE]
            # The URL is the first matching route's path ("/v1/models/{id}/content" is no model id).
            allowed = {m for r in matching if r.path == matching[0].path for m in r.methods}
            headers = {"Allow": ", ".join(sorted(allowed))}
        return error_response(APIError(status, message, code=code, headers=headers))

    def unexpected(error: Exception):
        if disk_full(error):  # whatever wrote: SQLite rolled back, the route removed its partial file
            log.warning("disk full: %s", error)
            return error_response(insufficient_storage("the disk is full"))
        log.exception("unhandled error", exc_info=error)
        return error_response(APIError(500, f"internal server error: {type(error).__name__}", code="server_error"))

    # OSError and SQLite's errors by their own handlers: answered here, not re-raised as a crash.
    for kind in (OSError, sqlite3.Error, Exception):
        app.add_exception_handler(kind, lambda _, error: unexpected(error))
