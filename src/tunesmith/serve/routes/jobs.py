"""/v1/fine_tuning/jobs: create (the request checked by jobs/request.py and here, trained by
jobs/supervisor.py), list (paged, filtered by ``metadata[KEY]=VALUE``), retrieve, cancel, pause,
resume, events, checkpoints.

A paused job keeps its run folder and checkpoints and gives its training slot up (its trainer is
stopped; the steps since its last checkpoint are trained again); resumed, it queues again and
continues from its last checkpoint when a slot is free.
"""

from __future__ import annotations

import random
from typing import Annotated

from fastapi import FastAPI, Query, Request

from tunesmith.serve.errors import APIError, found, too_many
from tunesmith.serve.jobs.request import METHODS, JobRequest
from tunesmith.serve.names import is_encoder
from tunesmith.serve.openapi import json_request
from tunesmith.serve.routes.graders import checked_grader
from tunesmith.serve.routes.params import Limit, Org, json_body, page, parse
from tunesmith.serve.settings import ServeSettings
from tunesmith.serve.store import TERMINAL, Store, new_id, now


def job_object(row: dict) -> dict:
    method = row["hyperparameters"].get("method", "supervised")
    fields = METHODS[method].model_fields
    hyper = {k: row["hyperparameters"].get(k, fields[k].default) for k in fields}  # "auto", or "default"
    section = {"hyperparameters": hyper}
    if method == "reinforcement":
        section = {"grader": row["hyperparameters"]["grader"], **section}
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
        "integrations": row["integrations"],
        "metadata": row["metadata"],
        "user_provided_suffix": row["suffix"],
        "method": {"type": method, method: section},
        "procs": row["procs"],  # tunesmith: training processes (tunesmith serve --procs-per-job)
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


def _check_sources(spec: JobRequest, store: Store, org: dict) -> list[dict | None]:
    """The job's model and files must be the organisation's to fine-tune; the rows of its training
    and validation files (None for none)."""
    from tunesmith.models import BUILTIN_MODELS, ENCODER_MODELS

    bases = BUILTIN_MODELS + ENCODER_MODELS
    # A fine-tuned model of the same organisation can be tuned further (SFT then DPO, as OpenAI allows).
    if spec.model not in bases and store.model(org["id"], spec.model) is None:
        raise APIError(
            400,
            f"model {spec.model!r} cannot be fine-tuned here; available: {', '.join(bases)} "
            "or a fine-tuned model of your organisation",
            param="model",
            code="model_not_available",
        )
    rows = []
    for key, file_id in (("training_file", spec.training_file), ("validation_file", spec.validation_file)):
        if file_id is None:
            rows.append(None)
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
        rows.append(row)
    return rows


def add_routes(app: FastAPI) -> None:
    store: Store = app.state.store
    worker = app.state.worker

    settings: ServeSettings = app.state.settings
    validation = app.state.executors["validation"]

    def over_cap() -> APIError:
        cap = settings.max_active_jobs_per_org
        return too_many(f"your organisation already has {cap} unfinished fine-tuning jobs", retry_after=60)

    @app.post("/v1/fine_tuning/jobs", openapi_extra=json_request(JobRequest))
    async def create_job(request: Request, org: Org):
        # Read as JSON whatever its Content-Type, as it always was (a body parameter would need JSON's).
        spec = parse(JobRequest, await json_body(request))
        graded = spec.method is not None and spec.method.type == "reinforcement"
        if graded:  # a grader that cannot run is refused now, not found an hour into training
            checked_grader(spec.method.reinforcement.grader, "method.reinforcement.grader")
        train, validation_row = _check_sources(spec, store, org)
        app.state.storage.check_free()  # 507 below the floor: a trainer would fill the disk for everyone
        if store.count_active_jobs(org["id"]) >= settings.max_active_jobs_per_org:
            raise over_cap()  # early, before any work; add_job below is what enforces it
        job_id = new_id("ftjob-")
        job = {
            "id": job_id,
            "org_id": org["id"],
            "model": spec.model,
            "training_file": spec.training_file,
            "validation_file": spec.validation_file,
            "suffix": spec.suffix,
            "seed": random.randint(0, 2**31 - 1) if spec.seed is None else spec.seed,
            "metadata": spec.metadata,
            "integrations": [i.model_dump(exclude_none=True) for i in spec.integrations or []],
            "hyperparameters": spec.job_hyperparameters(),
            "status": "validating_files",
            "created_at": now(),
            "run_dir": str(store.runs_dir / job_id),
            # Encoder runs train in one process (encoders/recipe.py refuses several).
            "procs": 1 if is_encoder(spec.model) else settings.procs_per_job,
        }
        if is_encoder(spec.model) or graded:
            # Pairs and graded prompts are read in a moment, without a tokenizer: a bad line (a field
            # the grader reads and the line lacks) is this request's 400, not a failed job (a
            # decoder's labelled files are tokenized, which takes too long to wait for here).
            check = await validation.run(org["id"], worker.check_files, job, train, validation_row)
            if not check.ok:
                raise APIError(400, check.message, param=check.param, code=f"invalid_{check.param}")
        row = store.add_job(job, max_active=settings.max_active_jobs_per_org)
        if row is None:  # other creates of the organisation took the last places while this one was checked
            raise over_cap()
        store.add_event(job_id, f"Created fine-tuning job: {job_id}")
        worker.wake()
        return job_object(row)

    @app.get("/v1/fine_tuning/jobs")
    def list_jobs(request: Request, org: Org, after: str | None = None, limit: Limit = 20):
        # OpenAI's filter: metadata[KEY]=VALUE, every pair given must match.
        metadata = {
            name[len("metadata[") : -1]: value
            for name, value in request.query_params.multi_items()
            if name.startswith("metadata[") and name.endswith("]")
        }
        return page(store.list_jobs(org["id"], after, limit + 1, metadata), limit, job_object)

    def get_job(org: dict, job_id: str) -> dict:
        return found(store.job(org["id"], job_id), "fine-tuning job", job_id, "fine_tuning_job_id")

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
            only_if_status=("validating_files", "queued", "running", "paused"),
            status="cancelled",
            finished_at=now(),
            estimated_finish=None,
        ):
            store.add_event(job_id, "Fine-tuning job cancelled")
            worker.cancel()
        return job_object(get_job(org, job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/pause")
    def pause_job(job_id: str, org: Org):
        get_job(org, job_id)
        if not store.update_job(job_id, only_if_status=("queued", "running"), status="paused", estimated_finish=None):
            status = get_job(org, job_id)["status"]
            raise APIError(
                400,
                f"the job is {status}: only a queued or running job can be paused",
                param="fine_tuning_job_id",
                code="job_not_pausable",
            )
        steps = [c["step"] for c in store.list_checkpoints(job_id, None, 1)]
        kept = f"; it keeps its checkpoint at step {steps[0]}" if steps else ""
        store.add_event(job_id, f"Fine-tuning job paused{kept}")
        worker.wake()  # its trainer is stopped at the next tick
        return job_object(get_job(org, job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/resume")
    def resume_job(job_id: str, org: Org):
        get_job(org, job_id)
        # attempts counts trainer starts since the last resume (the supervisor gives up after a few)
        if not store.update_job(job_id, only_if_status=("paused",), status="queued", attempts=0):
            status = get_job(org, job_id)["status"]
            raise APIError(
                400,
                f"the job is {status}: only a paused job can be resumed",
                param="fine_tuning_job_id",
                code="job_not_resumable",
            )
        store.add_event(job_id, "Fine-tuning job resumed")
        worker.wake()
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
