"""Inference on the tiny model under clients that misbehave: a real server process on loopback."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
from serve_helpers import alive, wait_for
from test_serve_api import chat_rows, upload

from tunesmith.serve.store import Store

HI = [{"role": "user", "content": "hi"}]


def http_for(server, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def chat(http: httpx.Client, model: str, **fields) -> httpx.Response:
    return http.post("/chat/completions", json={"model": model, "messages": HI, **fields})


def start_stream(http: httpx.Client, model: str, max_tokens: int) -> httpx.Response:
    # Greedy: a sampled stream from the random tiny model can draw its end-of-text token early and free
    # the slot before the test looks.
    body = {"model": model, "messages": HI, "max_tokens": max_tokens, "stream": True, "temperature": 0}
    request = http.build_request("POST", "/chat/completions", json=body)
    response = http.send(request, stream=True)
    assert response.status_code == 200
    return response


def test_disconnect_frees_the_model_and_caps_per_org(inference_server, tiny_model_name):
    server = inference_server("--max-inference-per-org", "1")
    acme, other = http_for(server, server.key("acme")), http_for(server, server.key("other"))
    assert chat(acme, tiny_model_name, max_tokens=1).status_code == 200  # loaded

    stream = start_stream(acme, tiny_model_name, max_tokens=2000)  # minutes of work if nobody stops it
    next(stream.iter_lines())
    busy = chat(acme, tiny_model_name, max_tokens=1)  # the organisation's one slot is taken
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["type"] == "rate_limit_error"
    stream.close()  # the client goes away mid-generation
    gone = time.monotonic()
    reply = chat(other, tiny_model_name, max_tokens=1)
    assert reply.status_code == 200 and time.monotonic() - gone <= 2.0  # the model was freed
    deadline = time.monotonic() + 2
    while (reply := chat(acme, tiny_model_name, max_tokens=1)).status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert reply.status_code == 200  # and the slot given back

    assert chat(acme, tiny_model_name, max_tokens=3, temperature=1e-40).status_code == 200  # greedy, no NaN
    long_prompt = [{"role": "user", "content": "hi " * 3000}]
    response = acme.post("/chat/completions", json={"model": tiny_model_name, "messages": long_prompt})
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"


def test_two_organisations_first_requests_load_the_model_once(inference_server, tiny_model_name):
    server = inference_server()
    clients = [http_for(server, server.key(org)) for org in ("acme", "other")]
    replies = [None, None]
    barrier = threading.Barrier(2)

    def ask(i: int) -> None:
        barrier.wait()
        replies[i] = chat(clients[i], tiny_model_name, max_tokens=2)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status_code for r in replies] == [200, 200], [r.text for r in replies]
    log = b"".join(p.read_bytes() for p in server.home.glob("server-*.log")).decode()
    assert log.count(f"loading base model {tiny_model_name}") == 1
    assert "ImportError" not in log and "Traceback" not in log


def test_management_is_fast_while_streams_are_read_slowly(inference_server, tiny_model_name):
    """4 streamed chats read one chunk a second; 20 clients x 25 list requests: p99 <= 1 s."""
    server = inference_server("--max-inference-per-org", "4")
    key = server.key("acme")
    acme = http_for(server, key)
    upload(server.client(key), chat_rows(4))
    assert chat(acme, tiny_model_name, max_tokens=1).status_code == 200  # loaded before the clock starts
    stop = threading.Event()

    chunks_read: list[int] = []

    def slow_reader() -> None:
        stream = start_stream(acme, tiny_model_name, max_tokens=200)
        try:
            for _ in stream.iter_lines():
                chunks_read.append(1)
                if stop.wait(1.0):
                    return
        finally:
            stream.close()

    readers = [threading.Thread(target=slow_reader) for _ in range(4)]
    for reader in readers:
        reader.start()
    time.sleep(1)
    latencies: list[float] = []
    statuses: list[int] = []

    def lister() -> None:
        with httpx.Client(base_url=server.url, headers=acme.headers, timeout=30) as http:
            for i in range(25):
                start = time.perf_counter()
                response = http.get(("/files", "/fine_tuning/jobs", "/models")[i % 3])
                latencies.append(time.perf_counter() - start)
                statuses.append(response.status_code)

    listers = [threading.Thread(target=lister) for _ in range(20)]
    for thread in listers:
        thread.start()
    for thread in listers:
        thread.join()
    stop.set()
    for reader in readers:
        reader.join()
    latencies.sort()
    p99 = latencies[int(0.99 * len(latencies)) - 1]
    load = os.getloadavg()[0]
    print(f"management requests: {len(latencies)}, p99 {p99:.3f} s, max {latencies[-1]:.3f} s, load {load:.1f}")
    assert len(chunks_read) >= 4 * 2  # the streams were being read all along
    assert statuses == [200] * 500 and p99 <= 1.0


def test_sigterm_during_generation_exits_and_leaves_jobs_resumable(inference_server, tiny_model_name):
    server = inference_server()
    key = server.key("acme")
    acme, client = http_for(server, key), server.client(key)
    job = client.fine_tuning.jobs.create(
        model=tiny_model_name, training_file=upload(client, chat_rows(40)).id, hyperparameters={"batch_size": 1}
    )
    wait_for(client, job.id, ("running",))
    stream = start_stream(acme, tiny_model_name, max_tokens=2000)
    next(stream.iter_lines())  # generating, and this client reads no more
    trainer = Store(server.home).job(None, job.id)["pid"]
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=30)
    assert time.monotonic() - start <= 10
    row = Store(server.home).job(None, job.id)
    assert row["status"] == "running" and not alive(trainer)  # resumed by the next start
