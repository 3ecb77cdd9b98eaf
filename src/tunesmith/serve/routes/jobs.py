"""/v1/fine_tuning/jobs: create (validated here, trained by serve/jobs/supervisor.py), list, retrieve,
cancel, events, checkpoints.
"""

from __future__ import annotations

import json
import random
import re
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request

from tunesmith.serve.errors import APIError, not_found, too_many
from tunesmith.serve.routes.params import Limit, Org, json_body, page
from tunesmith.serve.settings import ServeSettings
from tunesmith.serve.store import TERMINAL, Store, new_id, now

SUFFIX_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")  # fullmatch: "$" would let "abc\n" through
HYPERPARAMETERS = {
    "n_epochs": (int, 1, 50),
    "batch_size": (int, 1, 256),
    "learning_rate_multiplier": (float, 0, 10),
}
# OpenAI's fine-tuning methods and the hyperparameters each takes.
METHOD_HYPERPARAMETERS = {"supervised": HYPERPARAMETERS, "dpo": {**HYPERPARAMETERS, "beta": (float, 0, 2)}}


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
        # The method travels with the hyperparameters (the supervisor reads it there): no schema change.
        hyper["method"] = kind
    return {
        "model": model,
        "files": files,
        "suffix": suffix,
        "seed": seed,
        "metadata": metadata,
        "hyper": hyper,
    }


def add_routes(app: FastAPI) -> None:
    store: Store = app.state.store
    worker = app.state.worker

    settings: ServeSettings = app.state.settings

    @app.post("/v1/fine_tuning/jobs")
    async def create_job(request: Request, org: Org):
        spec = _job_request(await json_body(request), store, org)
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
        return page(store.list_jobs(org["id"], after, limit + 1), limit, job_object)

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
        return page(store.list_events(job_id, after, limit + 1), limit, event_object)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    def list_checkpoints(
        job_id: str,
        org: Org,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 10,
    ):
        get_job(org, job_id)
        return page(store.list_checkpoints(job_id, after, limit + 1), limit, checkpoint_object)
