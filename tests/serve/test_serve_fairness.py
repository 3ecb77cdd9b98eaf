"""One organisation must not hold the server: the key check needs no thread, blocking work runs in
bounded executors with per-organisation caps, and queues are fair between organisations."""

from __future__ import annotations

import asyncio
import time

import anyio.to_thread
import httpx
import numpy as np
import pytest

from tunesmith.serve.app import create_app
from tunesmith.serve.settings import DEFAULT_POOLS, PoolLimits, ServeSettings


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


SLOW = 1.0  # seconds each faked blocking call takes


class SlowEncoder:
    def encode(self, texts):
        time.sleep(SLOW)
        return np.zeros((len(texts), 4), dtype=np.float32)

    def tokenize(self, texts):
        return {"attention_mask": np.ones((len(texts), 2))}


def slow_export(run, target, outtype, path):
    time.sleep(SLOW)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF")


def slow_check(path):
    time.sleep(SLOW)


def embeddings_request(client, org):
    return client.post("/embeddings", json={"model": "minilm-l6", "input": "x"}, headers=org["headers"])


def export_request(client, org):
    return client.get(f"/models/{org['model']}/content", headers=org["headers"])


def upload_request(client, org):
    files = {"file": ("a.jsonl", b'{"a": 1}\n')}
    return client.post("/files", data={"purpose": "fine-tune"}, files=files, headers=org["headers"])


WORK = [  # (the executor's kind, a request that needs it, what makes the work slow)
    (
        "embeddings",
        embeddings_request,
        ("tunesmith.serve.routes.embeddings.EncoderPool.get", lambda self, name, source: SlowEncoder()),
    ),
    ("exports", export_request, ("tunesmith.export.export_run", slow_export)),
    ("upload-checks", upload_request, ("tunesmith.serve.routes.files.check_jsonl", slow_check)),
]


@pytest.mark.parametrize("kind, send, slow", WORK, ids=[w[0] for w in WORK])
def test_one_organisation_over_its_cap_gets_429_and_another_is_served(tmp_path, monkeypatch, kind, send, slow):
    """A sends 3 at once with a cap of 1 per organisation: 1 served, 2 refused with Retry-After; B,
    sending at the same time, is served too (its call does not wait behind A's)."""
    monkeypatch.setattr(*slow)
    pools = {**DEFAULT_POOLS, kind: PoolLimits(2, 1, "test")}
    app = create_app(ServeSettings(home=tmp_path / "home", pools=pools))
    store = app.state.store
    orgs = {}
    for name in ("a", "b"):
        key = store.create_key(name)
        org_id = store.org_for_key(key)["id"]
        run = tmp_path / name / "out"
        store.add_model(
            f"ft:tiny-llama-test:{name}::x", org_id, f"ftjob-{name}", "tiny-llama-test", str(run / "adapter")
        )
        orgs[name] = {"headers": {"Authorization": f"Bearer {key}"}, "model": f"ft:tiny-llama-test:{name}::x"}

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test/v1", timeout=30) as client:
            started = time.monotonic()
            replies = await asyncio.gather(*[send(client, orgs[o]) for o in ("a", "a", "a", "b")])
            return replies, time.monotonic() - started

    replies, took = asyncio.run(scenario())
    statuses = sorted(r.status_code for r in replies[:3])
    assert statuses == [200, 429, 429] and replies[3].status_code == 200, [r.text for r in replies]
    refused = [r for r in replies if r.status_code == 429]
    assert all(r.headers["retry-after"] == "1" for r in refused)
    assert all(r.json()["error"]["type"] == "rate_limit_error" for r in refused)
    assert took < 2 * SLOW  # A's and B's calls ran side by side
