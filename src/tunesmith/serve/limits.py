"""Limits that keep one client from taking the server: body size while it arrives (the caps on
concurrent work are the executors', serve/executors.py)."""

from __future__ import annotations

from starlette.exceptions import HTTPException

from tunesmith.serve.errors import APIError, error_response

# Room for the multipart headers and boundaries around an uploaded file's bytes.
MULTIPART_OVERHEAD = 64 * 1024


class BodyTooLarge(HTTPException):
    """Raised by a body read past the limit. An HTTPException so that FastAPI's own body parsing
    passes it on (it turns other read errors into a 400); the app answers it with ``error``."""

    def __init__(self, error: APIError):
        super().__init__(413, error.message)
        self.error = error


def too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than the limit of {limit} bytes", code="request_too_large")


def file_too_large(limit: int) -> APIError:
    return APIError(
        413, f"the file is larger than the upload limit of {limit} bytes", param="file", code="file_too_large"
    )


class BodyLimit:
    """ASGI middleware: refuse a body over its route's limit as it arrives.

    A declared Content-Length over the limit is refused before reading; a chunked body (no
    length) is counted chunk by chunk and the route's read fails with 413 at the first byte
    over, so nothing larger than the limit is ever buffered or written.
    """

    def __init__(self, app, json_limit: int, upload_limit: int):
        self.app, self.json_limit, self.upload_limit = app, json_limit, upload_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload = scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/files"
        limit = self.upload_limit + MULTIPART_OVERHEAD if upload else self.json_limit
        refusal = file_too_large(self.upload_limit) if upload else too_large(limit)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            return await error_response(refusal)(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(refusal)
            return message

        await self.app(scope, counted, send)
