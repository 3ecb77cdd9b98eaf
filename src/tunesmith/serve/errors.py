"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from fastapi.responses import JSONResponse

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


def not_found(kind: str, ident: str, param: str | None = None) -> APIError:
    """The same answer for a missing id and another organisation's id."""
    return APIError(404, f"No such {kind}: {ident}", param=param, code="not_found")


def too_many(message: str, retry_after: int) -> APIError:
    """429 with ``Retry-After``: the caller is over one of its organisation's caps."""
    return APIError(429, message, code="rate_limit_exceeded", headers={"Retry-After": str(retry_after)})


def in_use(message: str, param: str) -> APIError:
    return APIError(409, message, param=param, code="in_use")
