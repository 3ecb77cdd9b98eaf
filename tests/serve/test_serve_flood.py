"""Organisation A floods embeddings, GGUF exports and uploads; organisation B's management
requests stay fast (real server on loopback, fake trainer, the built-in encoder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from serve_helpers import wait_for
from test_serve_api import chat_rows, upload

FLOOD = Path(__file__).with_name("flood_client.py")


def test_one_organisations_flood_leaves_anothers_management_requests_fast(fake_server):
    server = fake_server()
    a_key, b_key = server.key("a"), server.key("b")
    a, b = server.client(a_key), server.client(b_key)
    job = a.fine_tuning.jobs.create(model="tiny-llama-test", training_file=upload(a, chat_rows(8)).id)
    model = wait_for(a, job.id).fine_tuned_model
    upload(b, chat_rows(4))
    flood = subprocess.Popen(
        [sys.executable, str(FLOOD), server.url, a_key, model],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(FLOOD.parent), os.environ.get("PYTHONPATH", "")])},
    )
    try:
        # Each kind of flood answered once (first-use imports and model loads done) before the clock starts.
        assert flood.stdout.readline().strip() == "ready"
        latencies: list[float] = []
        statuses: list[int] = []

        def manage() -> None:
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {b_key}"}, timeout=30) as http:
                for i in range(50):
                    start = time.perf_counter()
                    response = http.get(("/files", "/fine_tuning/jobs", "/models")[i % 3])
                    latencies.append(time.perf_counter() - start)
                    statuses.append(response.status_code)

        managers = [threading.Thread(target=manage) for _ in range(4)]
        for thread in managers:
            thread.start()
        for thread in managers:
            thread.join()
        flood_statuses = json.loads(flood.communicate("", timeout=120)[0])
    finally:
        flood.kill()
    latencies.sort()
    p99 = latencies[int(0.99 * len(latencies)) - 1]
    print(
        f"management requests: {len(latencies)}, median {latencies[len(latencies) // 2]:.3f} s, p99 {p99:.3f} s, "
        f"max {latencies[-1]:.3f} s; flood: {len(flood_statuses)} requests, {flood_statuses.count(429)} refused "
        f"(429); load {os.getloadavg()[0]:.1f}"
    )
    assert statuses == [200] * 200 and p99 <= 1.0
    assert 429 in flood_statuses and 500 not in flood_statuses  # A was held to its caps, and nothing broke
