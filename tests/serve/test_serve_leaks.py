"""No server path in what a client reads, and no token store shared between organisations."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
from serve_helpers import wait_for
from test_serve_api import chat_rows, upload

from tunesmith.data.store import store_root
from tunesmith.paths import tunesmith_home
from tunesmith.serve.redact import public
from tunesmith.serve.store import Store

HOME = Path(tempfile.gettempdir()) / "srv" / "home"

# (message, what the client reads)
MESSAGES = [
    (f"could not load {HOME}/runs/ftjob-a/out/adapter: no file", "could not load runs/ftjob-a/out/adapter: no file"),
    (f"'{HOME}' is full", "'.' is full"),
    (f"{HOME}2/x and {HOME}/files/f.jsonl", "<tmp>/srv/home2/x and files/f.jsonl"),
    (f"{tempfile.gettempdir()}/tmpab12/model.gguf", "<tmp>/tmpab12/model.gguf"),
    (f"{tunesmith_home()}/stores/abc/tokens.bin", "<cache>/stores/abc/tokens.bin"),
    (f'File "{sys.prefix}/lib/python3.11/json/decoder.py"', 'File "<python>/lib/python3.11/json/decoder.py"'),
    ("use /v1/embeddings for ft:minilm-l6:org-a::x", "use /v1/embeddings for ft:minilm-l6:org-a::x"),
]


@pytest.mark.parametrize("message, shown", MESSAGES)
def test_public_messages_name_no_server_path(message, shown):
    assert public(message, HOME) == shown


def _stores_of(path) -> list[Path]:
    metas = store_root().glob("*/meta.json") if store_root().is_dir() else []
    return [m.parent for m in metas if str(path) in json.loads(m.read_text())["files"]]


def test_token_stores_are_per_organisation_and_errors_name_no_server_path(fake_server):
    server = fake_server()
    rows, seen = chat_rows(6), {}
    for name in ("acme", "globex"):  # the same bytes uploaded by two organisations
        key = server.key(name)
        client = server.client(key)
        train = upload(client, rows)
        job = wait_for(client, client.fine_tuning.jobs.create(model="tiny-llama-test", training_file=train.id).id)
        assert job.status == "succeeded", job.error
        seen[name] = (client, key, train, job)
    stores = {name: _stores_of(server.home / "files" / f"{train.id}.jsonl") for name, (*_, train, _) in seen.items()}
    assert stores["acme"] and stores["globex"] and not set(stores["acme"]) & set(stores["globex"])

    # A model whose files broke: every error body names what broke relative to the home, or nothing.
    client, key, train, job = seen["acme"]
    row = Store(server.home).model(Store(server.home).org_for_key(key)["id"], job.fine_tuned_model)
    (Path(row["adapter_path"]) / "adapter_config.json").unlink()
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    chat = {"model": job.fine_tuned_model, "messages": [{"role": "user", "content": "hi"}]}
    run = f"runs/{job.id}/out"
    for method, path, body, status, shown in [
        ("POST", "/chat/completions", chat, 500, f"at '{run}/adapter'"),
        ("POST", "/completions", {"model": job.fine_tuned_model, "prompt": "hi", "stream": True}, 500, run),
        ("GET", f"/models/{job.fine_tuned_model}/content", None, 400, f"{run} is not a finished run folder"),
    ]:
        response = http.request(method, path, json=body)
        assert response.status_code == status and shown in response.json()["error"]["message"], response.text
        assert str(server.home) not in response.text and str(server.home.resolve()) not in response.text

    client.files.delete(train.id)
    assert not any(p.exists() for p in stores["acme"])
    assert all(p.exists() for p in stores["globex"])  # the other organisation's tokens stay
    seen["globex"][0].files.delete(seen["globex"][2].id)
