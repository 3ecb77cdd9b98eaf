"""What every route shares: the caller's organisation, list pages, JSON bodies and their models."""

from __future__ import annotations

import json
from typing import Annotated, TypeVar

from fastapi import Depends, Query, Request
from pydantic import BaseModel, ValidationError

from tunesmith.serve.auth import current_org
from tunesmith.serve.errors import APIError, invalid_request

Model = TypeVar("Model", bound=BaseModel)


async def json_body(request: Request) -> dict:
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


def parse(model: type[Model], body: dict) -> Model:
    """``body`` as a request model; what it refuses is OpenAI's 400, as FastAPI's own validation is."""
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise invalid_request(error.errors()) from None


def page(rows: list[dict], limit: int, render) -> dict:
    return {"object": "list", "data": [render(r) for r in rows[:limit]], "has_more": len(rows) > limit}


Limit = Annotated[int, Query(ge=1, le=100)]
Org = Annotated[dict, Depends(current_org)]
