"""One organisation must not hold the server: the key check needs no thread, blocking work runs in
bounded executors with per-organisation caps, and queues are fair between organisations."""

from __future__ import annotations

import asyncio

import anyio.to_thread
import httpx
import pytest

from tunesmith.serve.app import create_app
from tunesmith.serve.settings import ServeSettings


@pytest.fixture
def app(tmp_path):
    return create_app(ServeSettings(home=tmp_path / "home"))


def test_the_key_check_needs_no_thread_of_the_shared_pool(app):
    """With every thread of the framework's pool taken, a route that needs none still answers."""
    key = app.state.store.create_key("acme")

    async def scenario():
        limiter = anyio.to_thread.current_default_thread_limiter()
        holder = object()
        limiter.total_tokens = 1
        await limiter.acquire_on_behalf_of(holder)
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test/v1") as client:
                request = client.post(
                    "/embeddings", json={"model": "minilm-l6", "input": []}, headers={"Authorization": f"Bearer {key}"}
                )
                return await asyncio.wait_for(request, 5)
        finally:
            limiter.release_on_behalf_of(holder)

    reply = asyncio.run(scenario())
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "input"
