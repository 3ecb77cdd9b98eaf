"""OpenAI's grader routes: ``POST /v1/fine_tuning/alpha/graders/validate`` ({grader} -> {grader}, or
a 400 naming the field) and ``POST /v1/fine_tuning/alpha/graders/run`` ({grader, model_sample,
item} -> {reward, metadata, sub_rewards, model_grader_token_usage_per_model}).

The graders are tunesmith.graders, the ones training and evaluation use: python graders run in
the sandbox (own process, limits, no network, no server files). A score_model grader here names a
built-in model: a path would let a caller load any folder of the server's.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from tunesmith.graders.schema import Grader
from tunesmith.serve.errors import APIError
from tunesmith.serve.openapi import json_request
from tunesmith.serve.routes.params import Org, json_body


class GraderValidateRequest(BaseModel):
    """The body of ``/v1/fine_tuning/alpha/graders/validate`` (for the published schema; the handler
    parses the grader itself so that a bad one is a 400 naming its field)."""

    grader: Grader


class GraderRunRequest(BaseModel):
    """The body of ``/v1/fine_tuning/alpha/graders/run``."""

    grader: Grader
    model_sample: str
    item: dict[str, Any] = {}


def _graders(grader):
    from tunesmith.graders.schema import Multi

    return list(grader.graders.values()) if isinstance(grader, Multi) else [grader]


def checked_grader(raw, where: str = "grader"):
    """``raw`` (OpenAI's grader JSON, found at the request's ``where``) as a Grader that can run here,
    or a 400 naming the field: what the validate route answers, and what a reinforcement job's
    create answers before any training."""
    from tunesmith.graders import GraderError, parse_grader
    from tunesmith.graders.schema import ScoreModel
    from tunesmith.models import BUILTIN_MODELS

    try:
        grader = parse_grader(raw)
    except GraderError as error:
        param = f"{where}.{error.param}" if error.param else where
        raise APIError(400, f"invalid grader: {error}", param=param, code="invalid_grader") from None
    for i, sub in enumerate(_graders(grader)):
        if isinstance(sub, ScoreModel) and sub.model not in BUILTIN_MODELS:
            param = f"{where}.model" if sub is grader else f"{where}.graders.{list(grader.graders)[i]}.model"
            raise APIError(
                400,
                f"invalid grader: {param}: {sub.model!r} is not a model this server grades with "
                f"(one of {', '.join(BUILTIN_MODELS)})",
                param=param,
                code="invalid_grader",
            )
    return grader


def add_routes(app: FastAPI) -> None:
    from tunesmith.graders import Context, grade, make_sample

    context = Context()  # judges and the cosine encoder load once and stay loaded

    def parsed(body: dict):
        if "grader" not in body:
            raise APIError(400, "missing required parameter 'grader'", param="grader", code="invalid_request")
        return checked_grader(body["grader"])

    @app.post("/v1/fine_tuning/alpha/graders/validate", openapi_extra=json_request(GraderValidateRequest))
    async def validate(request: Request, org: Org):
        grader = parsed(await json_body(request))
        return {"grader": grader.model_dump(mode="json", exclude_none=True)}

    @app.post("/v1/fine_tuning/alpha/graders/run", openapi_extra=json_request(GraderRunRequest))
    async def run(request: Request, org: Org):
        body = await json_body(request)
        grader = parsed(body)
        sample, item = body.get("model_sample"), body.get("item", {})
        if not isinstance(sample, str):
            raise APIError(400, "model_sample must be a string (the model's answer)", param="model_sample")
        if not isinstance(item, dict):
            raise APIError(400, "item must be a JSON object (the dataset row the grader reads)", param="item")
        result = await run_in_threadpool(grade, grader, make_sample(sample), item, context)
        return {
            "reward": result.reward,
            "metadata": result.metadata(),
            "sub_rewards": result.sub_rewards,
            "model_grader_token_usage_per_model": result.tokens_per_model,
        }
