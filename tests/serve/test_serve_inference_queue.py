"""The inference queue (tiny model, real server on loopback): a request's generation time counts
from its start, a wait past the limit is a 503 (never an empty 200), a whole generation stops when
its client leaves, and base models stay loaded up to --max-loaded-models."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import httpx
import pytest
from test_serve_inference import chat, http_for

from tunesmith.serve.app import create_app
from tunesmith.serve.settings import ServeSettings

LONG = {"max_tokens": 2000, "temperature": 0}  # minutes of work if nothing stops it


def occupied(http: httpx.Client, model: str, timeout: float | None = None) -> threading.Thread:
    """A long generation started in the background; returns once it holds the one inference thread."""

    def ask():
        try:
            chat(http, model, **LONG) if timeout is None else http.post(
                "/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "hi"}], **LONG},
                timeout=timeout,
            )
        except httpx.TimeoutException:
            pass  # the client gave up and closed its connection

    thread = threading.Thread(target=ask)
    thread.start()
    time.sleep(0.5)
    return thread


QUEUE = [  # (serve options, what the request queued behind a long generation gets)
    (["--generation-timeout", "2", "--inference-queue-timeout", "60"], "generated"),
    (["--generation-timeout", "3", "--inference-queue-timeout", "0.5"], "503"),
]


@pytest.mark.parametrize("options, outcome", QUEUE, ids=[q[1] for q in QUEUE])
def test_a_queued_request_is_generated_in_full_or_refused_never_answered_empty(
    inference_server, tiny_model_name, options, outcome
):
    server = inference_server("--inference-threads", "1", *options)
    acme, other = http_for(server, server.key("acme")), http_for(server, server.key("other"))
    assert chat(acme, tiny_model_name, max_tokens=1).status_code == 200  # loaded before the clock starts
    long = occupied(acme, tiny_model_name)
    waited = time.monotonic()
    reply = chat(other, tiny_model_name, max_tokens=3, temperature=0)
    waited = time.monotonic() - waited
    long.join()
    if outcome == "generated":  # it waited ~2 s, as long as a generation may take, and was still served
        assert reply.status_code == 200 and waited >= 1.5, reply.text
        assert reply.json()["usage"]["completion_tokens"] >= 1 and reply.json()["choices"][0]["message"]["content"]
    else:
        assert reply.status_code == 503 and reply.headers["retry-after"] == "1", reply.text
        assert reply.json()["error"]["code"] == "server_busy" and reply.json()["error"]["type"] == "server_error"


def test_a_whole_generation_stops_when_its_client_leaves(inference_server, tiny_model_name):
    server = inference_server("--inference-threads", "1", "--generation-timeout", "600")
    acme, other = http_for(server, server.key("acme")), http_for(server, server.key("other"))
    assert chat(acme, tiny_model_name, max_tokens=1).status_code == 200
    occupied(acme, tiny_model_name, timeout=1.0).join()  # not streamed; the client leaves after 1 s
    left = time.monotonic()
    reply = chat(other, tiny_model_name, max_tokens=1)
    assert reply.status_code == 200 and time.monotonic() - left <= 5.0  # the thread and the model were freed


class FakeLoaded:
    def __init__(self):
        self.model = SimpleNamespace(eval=lambda: None, config=SimpleNamespace(max_position_embeddings=64))
        self.tokenizer = None


@pytest.mark.parametrize("kept, loads", [(1, 4), (2, 2)])
def test_alternating_base_models_reload_only_past_max_loaded_models(tmp_path, monkeypatch, kept, loads):
    loaded = []
    monkeypatch.setattr("tunesmith.models.load_model", lambda name: loaded.append(name) or FakeLoaded())
    engine = create_app(ServeSettings(home=tmp_path, max_loaded_models=kept)).state.engine
    for name in ("base-a", "base-b", "base-a", "base-b"):
        engine.prepare(name, None, None)
    assert len(loaded) == loads
