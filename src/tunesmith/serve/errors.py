"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import json

from fastapi.responses import JSONResponse
from pydantic_core import PydanticCustomError

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_response(error: APIError) -> JSONResponse:
    body = {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def found(row: dict | None, kind: str, ident: str, param: str) -> dict:
    """An organisation's ``row`` as the store returned it; None is a 404, the same answer for a
    missing id and another organisation's id."""
    if row is None:
        raise APIError(404, f"No such {kind}: {ident}", param=param, code="not_found")
    return row


def too_many(message: str, retry_after: int) -> APIError:
    """429 with ``Retry-After``: the caller is over one of its organisation's caps."""
    return APIError(429, message, code="rate_limit_exceeded", headers={"Retry-After": str(retry_after)})


def in_use(message: str, param: str) -> APIError:
    return APIError(409, message, param=param, code="in_use")


RULE = "invalid_value"  # the type of a request model's own checks (rule below)


def rule(message: str, **context) -> PydanticCustomError:
    """A request model's own check failing. ``message`` writes ``{where}`` for the value's dotted
    location (invalid_request fills it in); a ``key`` in ``context`` is a key inside that value."""
    return PydanticCustomError(RULE, message, context)


def invalid_request(errors) -> APIError:
    """pydantic's validation errors as one 400: all their messages, and the first one's location as
    ``param``."""
    parts, param = [], None
    for item in errors:
        kind, context = item.get("type"), item.get("ctx") or {}
        loc = [str(p) for p in item.get("loc", ()) if p not in ("body", "query", "path")]
        if kind == RULE and "key" in context:
            loc.append(str(context["key"]))
        where = ".".join(loc)
        param = param or where or None
        if kind == RULE:
            parts.append(item["msg"].replace("{where}", where))
        elif kind == "missing":
            parts.append(f"missing required parameter {where!r}")
        elif kind == "json_invalid":
            parts.append("the request body is not valid JSON")
        elif kind == "extra_forbidden":
            parts.append(f"unknown parameter {where!r}")
        else:
            got = item.get("input")
            shown = (
                json.dumps(got)[:100] if isinstance(got, (str, int, float, bool, type(None))) else type(got).__name__
            )
            parts.append(f"{where or 'body'}: {item.get('msg')} (got {shown})")
    return APIError(400, "; ".join(dict.fromkeys(parts)) or "invalid request", param=param, code="invalid_request")
