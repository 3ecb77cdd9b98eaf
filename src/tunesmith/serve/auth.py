"""API keys: ``Authorization: Bearer KEY`` maps to one organisation; only sha256(KEY) is stored."""

from __future__ import annotations

from fastapi import Request

from tunesmith.serve.errors import APIError


async def current_org(request: Request) -> dict:
    """FastAPI dependency: the caller's organisation, or 401 in OpenAI's error shape.

    A coroutine, so FastAPI runs it on the event loop: a plain function would take a thread of the
    shared pool for every request, and a busy pool would then hold even the cheapest route. The
    lookup is one indexed read of a WAL database, which never waits for a writer.
    """
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise APIError(
            401,
            "Missing API key: send 'Authorization: Bearer KEY' (create one with `tunesmith keys create`)",
            type="invalid_request_error",
            code="invalid_api_key",
        )
    org = request.app.state.store.org_for_key(key.strip())
    if org is None:
        raise APIError(401, "Incorrect API key provided", type="invalid_request_error", code="invalid_api_key")
    return org
