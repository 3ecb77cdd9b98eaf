"""OpenAI-compatible HTTP API: files, fine-tuning jobs, models, chat and text completions.

Every route needs ``Authorization: Bearer KEY``; every file, job and model belongs to the key's
organisation, and another organisation's id answers exactly like a missing one (404). Every
error, FastAPI's own request-validation errors included, has OpenAI's shape and a 4xx status for
bad input: malformed input is a 400, never a 422 or 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.serve.auth import current_org
from tunesmith.serve.errors import APIError, error_response, in_use, not_found, too_many
from tunesmith.serve.limits import BodyLimit, BodyTooLarge, OrgSlots
from tunesmith.serve.schemas import ChatRequest, CompletionRequest, _Generation
from tunesmith.serve.store import TERMINAL, Store, new_id, now

log = logging.getLogger("tunesmith.serve")

DEFAULT_MAX_UPLOAD_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # JSON bodies: a long chat history fits many times over
UPLOAD_PREFIX = ".upload-"  # an upload still arriving or being checked
BASE_MODEL_CREATED = 1730419200  # 2024-11-01, when SmolLM2 was released
SUFFIX_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")  # fullmatch: "$" would let "abc\n" through
HYPERPARAMETERS = {
    "n_epochs": (int, 1, 50),
    "batch_size": (int, 1, 256),
    "learning_rate_multiplier": (float, 0, 10),
}
# OpenAI's fine-tuning methods and the hyperparameters each takes.
METHOD_HYPERPARAMETERS = {"supervised": HYPERPARAMETERS, "dpo": {**HYPERPARAMETERS, "beta": (float, 0, 2)}}


@dataclass
class ServeSettings:
    home: Path
    trainer_command: list[str] | None = None  # argv before "CONFIG --overwrite|--resume"
    max_running: int = 1
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    train_overrides: list[str] = field(default_factory=list)  # dotted config overrides for every job
    max_adapters: int = 4
    poll_seconds: float = 0.5
    procs_per_job: int = 1  # training processes per job (tunesmith train --nproc-per-node)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_active_jobs_per_org: int = 20  # validating, queued or running
    max_inference_per_org: int = 4
    inference_threads: int = 2
    generation_timeout: float = 120.0  # seconds one generation may compute


def create_app(settings: ServeSettings) -> FastAPI:
    from tunesmith.serve.inference import InferenceEngine
    from tunesmith.serve.worker import Worker

    store = Store(settings.home)
    worker = Worker(
        store,
        settings.trainer_command,
        settings.max_running,
        settings.poll_seconds,
        settings.train_overrides,
        settings.procs_per_job,
    )

    engine = InferenceEngine(max_adapters=settings.max_adapters)
    # Generation and model loads run here, never in the pool that serves management routes.
    inference_pool = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="tunesmith-inference")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store.remove_orphans()
        worker.start()
        try:
            yield
        finally:
            engine.close()
            inference_pool.shutdown(wait=False, cancel_futures=True)
            worker.stop()

    app = FastAPI(title="tunesmith", lifespan=lifespan)
    app.state.store, app.state.worker, app.state.settings = store, worker, settings
    app.state.engine, app.state.inference_pool = engine, inference_pool
    app.state.inference_slots = OrgSlots(settings.max_inference_per_org)
    app.add_middleware(BodyLimit, json_limit=settings.max_body_bytes, upload_limit=settings.max_upload_bytes)
    _install_error_handlers(app)
    _files_routes(app)
    _job_routes(app)
    _export_routes(app)  # before the model routes: their {model_id:path} would take ".../content" too
    _model_routes(app)
    _inference_routes(app)
    from tunesmith.serve.embeddings import embedding_routes

    embedding_routes(app)
    return app


# --- errors ---------------------------------------------------------------------------------------


def _validation_message(errors) -> tuple[str, str | None]:
    parts, param = [], None
    for item in errors:
        loc = [str(p) for p in item.get("loc", ()) if p not in ("body", "query", "path")]
        where = ".".join(loc)
        param = param or where or None
        if item.get("type") == "missing":
            parts.append(f"missing required parameter {where!r}")
        elif item.get("type") == "json_invalid":
            parts.append("the request body is not valid JSON")
        elif item.get("type") == "extra_forbidden":
            parts.append(f"unknown parameter {where!r}")
        else:
            got = item.get("input")
            shown = (
                json.dumps(got)[:100] if isinstance(got, (str, int, float, bool, type(None))) else type(got).__name__
            )
            parts.append(f"{where or 'body'}: {item.get('msg')} (got {shown})")
    return "; ".join(dict.fromkeys(parts)) or "invalid request", param


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, error: APIError):
        return error_response(error)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(_: Request, error: BodyTooLarge):
        return error_response(error.error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError):
        message, param = _validation_message(error.errors())
        return error_response(APIError(400, message, param=param, code="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException):
        status = error.status_code
        code = {404: "not_found", 405: "method_not_allowed"}.get(status)
        message = "Unknown URL" if status == 404 else str(error.detail)
        return error_response(APIError(status, message, code=code))

    @app.exception_handler(Exception)
    async def server_error(_: Request, error: Exception):
        log.exception("unhandled error")
        return error_response(APIError(500, f"internal server error: {type(error).__name__}", code="server_error"))


async def _json_body(request: Request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError, and integers over 4,300 digits
        raise APIError(400, "the request body is not valid JSON", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_request")
    return body


def _page(rows: list[dict], limit: int, render) -> dict:
    return {"object": "list", "data": [render(r) for r in rows[:limit]], "has_more": len(rows) > limit}


Limit = Annotated[int, Query(ge=1, le=100)]
Org = Annotated[dict, Depends(current_org)]


# --- files ----------------------------------------------------------------------------------------


def file_object(row: dict) -> dict:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": row["status"],
        "status_details": None,
        "expires_at": None,
    }


def check_jsonl(path: Path) -> None:
    """Every non-blank line must be a JSON object (the data validator checks the fields later)."""
    bad, count = [], 0
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            count += 1
            try:
                value = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
                if not isinstance(value, dict):
                    bad.append(f"line {number}: a JSON {type(value).__name__}, not an object")
            except UnicodeDecodeError:
                bad.append(f"line {number}: not valid UTF-8")
            except json.JSONDecodeError as error:
                bad.append(f"line {number}: not valid JSON ({error.msg})")
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise APIError(
            400,
            "Invalid file format for fine-tune: the file must be JSONL, one JSON object per line; "
            + "; ".join(bad[:5])
            + more,
            param="file",
            code="invalid_file_format",
        )
    if count == 0:
        raise APIError(
            400,
            "Invalid file: the file has no examples (it is empty)",
            param="file",
            code="invalid_file_format",
        )


def _files_routes(app: FastAPI) -> None:
    store: Store = app.state.store
    settings: ServeSettings = app.state.settings

    @app.post("/v1/files")
    async def upload_file(request: Request, org: Org):
        from starlette.concurrency import run_in_threadpool

        from tunesmith.serve.uploads import receive_upload

        file_id = new_id("file-")
        path = store.files_dir / f"{file_id}.jsonl"  # the client's file name is never part of a path
        partial = store.files_dir / f"{UPLOAD_PREFIX}{file_id}"  # removed at start if the server dies
        upload = await receive_upload(request, partial, settings.max_upload_bytes)
        try:
            purpose = upload.fields.get("purpose")
            if not purpose:
                raise APIError(400, "missing required parameter 'purpose'", param="purpose")
            if purpose != "fine-tune":
                raise APIError(400, f"purpose {purpose!r} is not supported; use 'fine-tune'", param="purpose")
            if upload.size < 0:
                raise APIError(400, "missing required parameter 'file' (a file part)", param="file")
            await run_in_threadpool(check_jsonl, partial)  # reads the whole file: off the event loop
            partial.rename(path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        name = (upload.filename or "upload.jsonl").replace("\\", "/").rsplit("/", 1)[-1][:255] or "upload.jsonl"
        return file_object(store.add_file(file_id, org["id"], name, purpose, upload.size, str(path)))

    @app.get("/v1/files")
    def list_files(
        org: Org,
        purpose: str | None = None,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
        order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    ):
        return _page(store.list_files(org["id"], purpose, after, limit + 1, order), limit, file_object)

    def get_file(org: dict, file_id: str) -> dict:
        row = store.file(org["id"], file_id)
        if row is None:
            raise not_found("file", file_id, param="file_id")
        return row

    @app.get("/v1/files/{file_id}")
    def retrieve_file(file_id: str, org: Org):
        return file_object(get_file(org, file_id))

    @app.get("/v1/files/{file_id}/content")
    def file_content(file_id: str, org: Org):
        row = get_file(org, file_id)
        return FileResponse(row["path"], media_type="application/octet-stream", filename=row["filename"])

    @app.delete("/v1/files/{file_id}")
    def delete_file(file_id: str, org: Org):
        row = get_file(org, file_id)
        users = store.active_jobs_using_file(org["id"], file_id)
        if users:
            raise in_use(f"file {file_id} is used by fine-tuning job {users[0]}, which has not finished", "file_id")
        store.delete_file(org["id"], file_id)
        Path(row["path"]).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}


# --- fine-tuning jobs -----------------------------------------------------------------------------


def _hyperparameters(raw: Any, where: str, allowed: dict = HYPERPARAMETERS) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise APIError(400, f"{where} must be an object", param=where)
    out = {}
    for key, value in raw.items():
        if key not in allowed:
            raise APIError(
                400,
                f"unknown hyperparameter {where}.{key} (expected one of {', '.join(allowed)})",
                param=f"{where}.{key}",
            )
        kind, low, high = allowed[key]
        if value is None or value == "auto":
            out[key] = "auto"
            continue
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int and ok_type and float(value).is_integer():
            value = int(value)
        elif kind is int or not ok_type:
            expect = "an integer" if kind is int else "a number"
            raise APIError(
                400,
                f"{where}.{key} must be 'auto' or {expect}, got {json.dumps(value)}",
                param=f"{where}.{key}",
            )
        if not (low < value <= high if kind is float else low <= value <= high):
            rule = f"> {low} and <= {high}" if kind is float else f"between {low} and {high}"
            raise APIError(400, f"{where}.{key} must be {rule}, got {value}", param=f"{where}.{key}")
        out[key] = value
    return out


def job_object(row: dict) -> dict:
    method = row["hyperparameters"].get("method", "supervised")
    hyper = {k: row["hyperparameters"].get(k, "auto") for k in METHOD_HYPERPARAMETERS[method]}
    return {
        "id": row["id"],
        "object": "fine_tuning.job",
        "created_at": row["created_at"],
        "error": row["error"],
        "fine_tuned_model": row["fine_tuned_model"],
        "finished_at": row["finished_at"],
        "hyperparameters": hyper,
        "model": row["model"],
        "organization_id": row["org_id"],
        "result_files": row["result_files"],
        "seed": row["seed"],
        "status": row["status"],
        "trained_tokens": row["trained_tokens"],
        "training_file": row["training_file"],
        "validation_file": row["validation_file"],
        "estimated_finish": row["estimated_finish"],
        "integrations": [],
        "metadata": row["metadata"],
        "user_provided_suffix": row["suffix"],
        "method": {"type": method, method: {"hyperparameters": hyper}},
    }


def event_object(row: dict) -> dict:
    return {
        "id": row["id"],
        "object": "fine_tuning.job.event",
        "created_at": row["created_at"],
        "level": row["level"],
        "message": row["message"],
        "type": row["type"],
        "data": row["data"],
    }


def checkpoint_object(row: dict) -> dict:
    return {
        "id": row["id"],
        "object": "fine_tuning.job.checkpoint",
        "created_at": row["created_at"],
        "fine_tuned_model_checkpoint": row["model_name"],
        "fine_tuning_job_id": row["job_id"],
        "metrics": row["metrics"],
        "step_number": row["step"],
    }


_JOB_KEYS = {
    "model",
    "training_file",
    "validation_file",
    "suffix",
    "seed",
    "metadata",
    "hyperparameters",
    "method",
    "integrations",
}


def _job_request(body: dict, store: Store, org: dict) -> dict:
    from tunesmith.models import BUILTIN_MODELS

    unknown = sorted(set(body) - _JOB_KEYS)
    if unknown:
        raise APIError(400, f"unknown parameter {unknown[0]!r}", param=unknown[0])
    for key in ("model", "training_file"):
        if key not in body or body[key] in (None, ""):
            raise APIError(400, f"missing required parameter {key!r}", param=key)
    for key in ("model", "training_file", "validation_file", "suffix"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise APIError(400, f"{key} must be a string, got {json.dumps(body[key])}", param=key)
    model = body["model"]
    # A fine-tuned model of the same organisation can be tuned further (SFT then DPO, as OpenAI allows).
    if model not in BUILTIN_MODELS and store.model(org["id"], model) is None:
        raise APIError(
            400,
            f"model {model!r} cannot be fine-tuned here; available: {', '.join(BUILTIN_MODELS)} "
            "or a fine-tuned model of your organisation",
            param="model",
            code="model_not_available",
        )
    files = {}
    for key in ("training_file", "validation_file"):
        file_id = body.get(key)
        if file_id is None:
            continue
        row = store.file(org["id"], file_id)
        if row is None:
            raise APIError(400, f"invalid {key}: no such file: {file_id}", param=key, code="invalid_file")
        if row["purpose"] != "fine-tune":
            raise APIError(
                400,
                f"invalid {key}: {file_id} has purpose {row['purpose']!r}, not 'fine-tune'",
                param=key,
                code="invalid_file",
            )
        files[key] = row
    suffix = body.get("suffix")
    if suffix is not None and not SUFFIX_RE.fullmatch(suffix):
        raise APIError(400, "suffix must be 1 to 64 letters, digits, '.', '_' or '-'", param="suffix")
    seed = body.get("seed")
    if seed is None:
        seed = random.randint(0, 2**31 - 1)
    elif not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= 2**31 - 1:
        raise APIError(400, f"seed must be an integer between 0 and 2147483647, got {json.dumps(seed)}", param="seed")
    metadata = body.get("metadata")
    if metadata is not None:
        if (
            not isinstance(metadata, dict)
            or len(metadata) > 16
            or not all(
                isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                for k, v in metadata.items()
            )
        ):
            raise APIError(
                400,
                "metadata must be at most 16 string keys (<= 64 chars) with string values (<= 512 chars)",
                param="metadata",
            )
    if body.get("integrations"):
        raise APIError(400, "integrations are not supported", param="integrations")
    hyper = _hyperparameters(body.get("hyperparameters"), "hyperparameters")
    method = body.get("method")
    kind = "supervised"
    if method is not None:
        kind = method.get("type") if isinstance(method, dict) else method
        if not isinstance(method, dict) or kind not in METHOD_HYPERPARAMETERS:
            expected = " or ".join(repr(m) for m in METHOD_HYPERPARAMETERS)
            raise APIError(400, f"method.type must be {expected} (got {json.dumps(kind)})", param="method.type")
        section = method.get(kind) or {}
        if not isinstance(section, dict):
            raise APIError(400, f"method.{kind} must be an object", param=f"method.{kind}")
        where = f"method.{kind}.hyperparameters"
        from_method = _hyperparameters(section.get("hyperparameters"), where, METHOD_HYPERPARAMETERS[kind])
        if hyper and from_method:
            raise APIError(
                400,
                f"give hyperparameters either at the top level or in method.{kind}, not both",
                param="hyperparameters",
            )
        hyper = hyper or from_method
    if kind != "supervised":
        # The method travels with the hyperparameters (worker.py reads it there): no schema change.
        hyper["method"] = kind
    return {
        "model": model,
        "files": files,
        "suffix": suffix,
        "seed": seed,
        "metadata": metadata,
        "hyper": hyper,
    }


def _job_routes(app: FastAPI) -> None:
    store: Store = app.state.store
    worker = app.state.worker

    settings: ServeSettings = app.state.settings

    @app.post("/v1/fine_tuning/jobs")
    async def create_job(request: Request, org: Org):
        spec = _job_request(await _json_body(request), store, org)
        cap = settings.max_active_jobs_per_org
        if store.count_active_jobs(org["id"]) >= cap:
            raise too_many(f"your organisation already has {cap} unfinished fine-tuning jobs", retry_after=60)
        job_id = new_id("ftjob-")
        row = store.add_job(
            {
                "id": job_id,
                "org_id": org["id"],
                "model": spec["model"],
                "training_file": spec["files"]["training_file"]["id"],
                "validation_file": spec["files"]["validation_file"]["id"]
                if "validation_file" in spec["files"]
                else None,
                "suffix": spec["suffix"],
                "seed": spec["seed"],
                "metadata": spec["metadata"],
                "hyperparameters": spec["hyper"],
                "status": "validating_files",
                "created_at": now(),
                "run_dir": str(store.runs_dir / job_id),
            }
        )
        store.add_event(job_id, f"Created fine-tuning job: {job_id}")
        worker.wake()
        return job_object(row)

    @app.get("/v1/fine_tuning/jobs")
    def list_jobs(org: Org, after: str | None = None, limit: Limit = 20):
        return _page(store.list_jobs(org["id"], after, limit + 1), limit, job_object)

    def get_job(org: dict, job_id: str) -> dict:
        row = store.job(org["id"], job_id)
        if row is None:
            raise not_found("fine-tuning job", job_id, param="fine_tuning_job_id")
        return row

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    def retrieve_job(job_id: str, org: Org):
        return job_object(get_job(org, job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    def cancel_job(job_id: str, org: Org):
        row = get_job(org, job_id)
        if row["status"] in TERMINAL:
            raise APIError(
                400,
                f"the job is already {row['status']}",
                param="fine_tuning_job_id",
                code="job_not_cancellable",
            )
        if store.update_job(
            job_id,
            only_if_status=("validating_files", "queued", "running"),
            status="cancelled",
            finished_at=now(),
            estimated_finish=None,
        ):
            store.add_event(job_id, "Fine-tuning job cancelled")
            worker.cancel()
        return job_object(get_job(org, job_id))

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    def list_events(
        job_id: str,
        org: Org,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    ):
        get_job(org, job_id)
        return _page(store.list_events(job_id, after, limit + 1), limit, event_object)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    def list_checkpoints(
        job_id: str,
        org: Org,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 10,
    ):
        get_job(org, job_id)
        return _page(store.list_checkpoints(job_id, after, limit + 1), limit, checkpoint_object)


# --- models ---------------------------------------------------------------------------------------


def _export_routes(app: FastAPI) -> None:
    store: Store = app.state.store

    @app.get("/v1/models/{model_id:path}/content")
    async def model_content(model_id: str, org: Org, format: str = "gguf", outtype: str = "f16"):
        """The fine-tuned model as one GGUF file (llama.cpp, Ollama, LM Studio), written on first request."""
        # Imported here: the exporters bring torch and transformers, which the server needs only now.
        from tunesmith.errors import TunesmithError
        from tunesmith.export import export_run
        from tunesmith.export.gguf import OUTTYPES

        if format != "gguf":
            raise APIError(400, f"format {format!r} is not supported; use format=gguf", param="format")
        if outtype not in OUTTYPES:
            raise APIError(400, f"outtype {outtype!r}: choose one of {', '.join(OUTTYPES)}", param="outtype")
        row = store.model(org["id"], model_id)
        if row is None:
            raise APIError(404, f"The model {model_id!r} does not exist", param="model", code="model_not_found")
        run = Path(row["adapter_path"]).parent
        path = run / "export" / f"model-{outtype}.gguf"
        if not path.is_file():
            try:
                await _in_thread(lambda: export_run(run, "gguf", outtype, path))
            except TunesmithError as error:
                raise APIError(400, str(error), param="model", code="model_not_exportable") from None
        filename = re.sub(r"[^A-Za-z0-9._-]", "_", model_id) + f"-{outtype}.gguf"
        return FileResponse(path, media_type="application/octet-stream", filename=filename)


def _model_routes(app: FastAPI) -> None:
    from tunesmith.models import BUILTIN_MODELS, ENCODER_MODELS

    store: Store = app.state.store

    def base_object(name: str) -> dict:
        return {"id": name, "object": "model", "created": BASE_MODEL_CREATED, "owned_by": "tunesmith"}

    def ft_object(row: dict) -> dict:
        return {"id": row["id"], "object": "model", "created": row["created"], "owned_by": row["org_id"]}

    @app.get("/v1/models")
    def list_models(org: Org):
        bases = [base_object(n) for n in BUILTIN_MODELS + ENCODER_MODELS]
        data = bases + [ft_object(r) for r in store.list_models(org["id"])]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id:path}")
    def retrieve_model(model_id: str, org: Org):
        if model_id in BUILTIN_MODELS + ENCODER_MODELS:
            return base_object(model_id)
        row = store.model(org["id"], model_id)
        if row is None:
            raise APIError(404, f"The model {model_id!r} does not exist", param="model", code="model_not_found")
        return ft_object(row)

    @app.delete("/v1/models/{model_id:path}")
    def delete_model(model_id: str, org: Org):
        if model_id in BUILTIN_MODELS:
            raise APIError(
                400,
                f"{model_id!r} is a base model; only fine-tuned models can be deleted",
                param="model",
                code="model_not_deletable",
            )
        row = store.model(org["id"], model_id)
        if row is None:
            raise APIError(404, f"The model {model_id!r} does not exist", param="model", code="model_not_found")
        store.delete_model(org["id"], model_id)
        app.state.engine.forget(row["job_id"])
        # The adapter, merged weights, checkpoints and exports: all of the run's outputs.
        shutil.rmtree(Path(row["adapter_path"]).parent, ignore_errors=True)
        return {"id": model_id, "object": "model", "deleted": True}


# --- inference ------------------------------------------------------------------------------------


def _inference_routes(app: FastAPI) -> None:
    from tunesmith.models import BUILTIN_MODELS

    store: Store = app.state.store
    settings: ServeSettings = app.state.settings
    engine = app.state.engine
    pool: ThreadPoolExecutor = app.state.inference_pool
    slots: OrgSlots = app.state.inference_slots

    def resolve(org: dict, name: str) -> tuple[str, str | None, str | None, str]:
        if name in BUILTIN_MODELS:
            return name, None, None, name
        row = store.model(org["id"], name)
        if row is None:
            raise APIError(
                404,
                f"The model {name!r} does not exist or you do not have access to it",
                param="model",
                code="model_not_found",
            )
        return row["base"], row["job_id"], row["adapter_path"], name

    def load_and_encode(base: str, key: str | None, path: str | None, encode, param: str) -> list[int]:
        """In the inference pool: load the model (and adapter), then the prompt's token ids."""
        try:
            engine.prepare(base, key, path)
        except Exception as error:
            log.exception("loading %s", base)
            raise APIError(500, f"could not load the model: {error}", code="model_load_failed") from None
        prompt_ids = encode(base)
        context = engine.context_length(base)
        if len(prompt_ids) >= context:
            raise APIError(
                400,
                f"the prompt is {len(prompt_ids)} tokens; this model's context is {context} tokens",
                param=param,
                code="context_length_exceeded",
            )
        return prompt_ids

    async def complete(org: dict, body: _Generation, encode, param: str, chat: bool):
        params = body.sampling(256 if chat else 16)
        base, key, path, name = resolve(org, body.model)
        slots.acquire(org["id"])
        loop = asyncio.get_running_loop()
        stop = threading.Event()  # set when the client is gone: the generation ends at its next token
        streaming = False
        try:
            prompt_ids = await loop.run_in_executor(pool, load_and_encode, base, key, path, encode, param)
            deadline = time.monotonic() + settings.generation_timeout

            def pieces():
                return engine.generate(base, key, path, prompt_ids, params, stop, deadline)

            reply = Reply(name, chat, body.include_usage)
            if not body.stream:
                return JSONResponse(reply.whole(await loop.run_in_executor(pool, lambda: list(pieces()))))
            queue: asyncio.Queue = asyncio.Queue()

            def put(item) -> None:
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, item)
                except RuntimeError:  # the event loop is gone: the server is shutting down
                    stop.set()

            def produce() -> None:
                # Runs to the end whatever the client reads: the model is never held by a slow reader.
                try:
                    for piece in pieces():
                        put(piece)
                except Exception as error:
                    log.exception("generation failed")
                    put(error)
                finally:
                    slots.release(org["id"])
                    put(None)

            pool.submit(produce)
            streaming = True
            return StreamingResponse(
                reply.stream(queue, stop),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        finally:
            if not streaming:
                stop.set()
                slots.release(org["id"])

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, org: Org):
        messages = [message.as_dict() for message in body.messages]

        def encode(base: str) -> list[int]:
            try:
                return engine.chat_prompt(base, messages)
            except Exception as error:
                raise APIError(
                    400, f"messages cannot be rendered with the model's chat template: {error}", param="messages"
                ) from None

        return await complete(org, body, encode, "messages", chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, org: Org):
        def encode(base: str) -> list[int]:
            prompt_ids = engine.text_prompt(base, body.text)
            if not prompt_ids:
                raise APIError(400, "prompt must not be empty", param="prompt")
            return prompt_ids

        return await complete(org, body, encode, "prompt", chat=False)


class Reply:
    """One completion's response: the whole object, or its server-sent event stream."""

    def __init__(self, model: str, chat: bool, include_usage: bool):
        self.model, self.chat, self.include_usage = model, chat, include_usage
        self.id = new_id("chatcmpl-" if chat else "cmpl-")
        self.created = int(time.time())

    @staticmethod
    def usage(last) -> dict:
        return {
            "prompt_tokens": last.prompt_tokens,
            "completion_tokens": last.completion_tokens,
            "total_tokens": last.prompt_tokens + last.completion_tokens,
        }

    def whole(self, pieces: list) -> dict:
        text, last = "".join(p.text for p in pieces), pieces[-1]
        choice = {"index": 0, "finish_reason": last.finish_reason, "logprobs": None}
        choice.update(
            {"message": {"role": "assistant", "content": text, "refusal": None}} if self.chat else {"text": text}
        )
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(last),
            "system_fingerprint": None,
        }

    def _event(self, choices: list, **extra) -> bytes:
        obj = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(obj)}\n\n".encode()

    def _chunk(self, delta_or_text, finish=None) -> bytes:
        choice = {"index": 0, "finish_reason": finish, "logprobs": None}
        choice.update({"delta": delta_or_text} if self.chat else {"text": delta_or_text})
        return self._event([choice], system_fingerprint=None)

    async def stream(self, queue: asyncio.Queue, stop: threading.Event):
        try:
            if self.chat:
                yield self._chunk({"role": "assistant", "content": ""})
            last = None
            while (piece := await queue.get()) is not None:
                if isinstance(piece, Exception):
                    raise piece
                last = piece
                if piece.text:
                    yield self._chunk({"content": piece.text} if self.chat else piece.text)
            yield self._chunk({} if self.chat else "", last.finish_reason)
            if self.include_usage:
                yield self._event([], usage=self.usage(last))
        except Exception as error:
            message = {"message": f"generation failed: {error}", "type": "server_error", "param": None}
            yield f"data: {json.dumps({'error': {**message, 'code': 'server_error'}})}\n\n".encode()
        finally:
            stop.set()  # the client left (the stream was cancelled) or all was sent
        yield b"data: [DONE]\n\n"


async def _in_thread(fn):
    """Model loading and non-streamed generation block: keep them off the event loop."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn)
