"""Fine-tuning jobs on an encoder, and the fine-tune in /v1/embeddings, through the official openai SDK.

OpenAI's ``supervised`` method on an encoder is contrastive fine-tuning on query/positive pairs.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import yaml
from serve_helpers import wait_for

from tunesmith.encoders.model import load_encoder
from tunesmith.models import MINILM_L6
from tunesmith.serve.store import Store

# The encoder tests' papers (tests/encoders), shared rather than copied.
sys.path.append(str(Path(__file__).parents[1] / "encoders"))
from encoder_helpers import PAPERS  # noqa: E402

PAIRS = [{"query": title, "positive": abstract} for title, abstract in PAPERS]
TEXTS = ["protein structure prediction", "Clients share only noisy updates."]


def upload(client, rows, name="pairs.jsonl"):
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune")


def supervised(**hyperparameters):
    return {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}


def run_config(server, job) -> dict:
    return yaml.safe_load((server.home / "runs" / job.id / "config.yaml").read_text())


def test_encoder_job_trains_and_its_fine_tune_embeds(make_server, tiny_bert):
    # The job asks for the built-in encoder; the override trains the tiny random BERT in its place,
    # so the real contrastive recipe runs in seconds.
    server = make_server(["--train-override", f"model={tiny_bert}"])
    key = server.key("acme")
    client = server.client(key)
    train, valid = upload(client, PAIRS[:6], "train.jsonl"), upload(client, PAIRS[6:], "valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model=MINILM_L6,
        training_file=train.id,
        validation_file=valid.id,
        suffix="papers",
        method=supervised(n_epochs=1, batch_size=2),
    )
    job = wait_for(client, job.id, timeout=120)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{MINILM_L6}:{Store(server.home).org_for_key(key)['id']}:papers:{job.id[-8:]}"
    assert job.method.type == "supervised" and job.trained_tokens > 0
    assert run_config(server, job)["method"]["objective"] == "contrastive"
    metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
    assert sorted(m["step"] for m in metrics) == [1, 2, 3]  # 6 pairs, 2 a step, one epoch
    assert all(isinstance(m["train_loss"], float) for m in metrics) and "valid_loss" in metrics[0]
    # The encoder's accuracy (queries whose positive ranks first) under the names decoder jobs use.
    assert all(0.0 <= m["train_mean_token_accuracy"] <= 1.0 for m in metrics)
    assert 0.0 <= metrics[0]["valid_mean_token_accuracy"] <= 1.0

    reply = client.embeddings.create(model=job.fine_tuned_model, input=TEXTS)
    got = np.array([d.embedding for d in reply.data], dtype=np.float32)
    merged = load_encoder(str(server.home / "runs" / job.id / "out" / "merged"))
    assert reply.model == job.fine_tuned_model and np.abs(got - merged.encode(TEXTS)).max() <= 1e-5
    assert np.abs(got - load_encoder(tiny_bert).encode(TEXTS)).max() > 1e-4  # the fine-tune, not its base
    assert reply.usage.prompt_tokens == int(merged.tokenize(TEXTS)["attention_mask"].sum())
    assert job.fine_tuned_model in [m.id for m in client.models.list()]

    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
    assert "/v1/embeddings" in caught.value.body["message"]
    # A decoder fine-tune of the same organisation is no embedding model.
    store = Store(server.home)
    decoder = "ft:tiny-llama-test:acme::decoder1"
    store.add_model(decoder, store.org_for_key(key)["id"], "ftjob-decoder1", "tiny-llama-test", "unused/adapter")
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model=decoder, input=TEXTS)
    assert caught.value.body["code"] == "model_not_found"

    other = server.client(server.key("globex"))
    with pytest.raises(openai.NotFoundError) as caught:
        other.embeddings.create(model=job.fine_tuned_model, input=TEXTS)
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"
    assert job.fine_tuned_model not in [m.id for m in other.models.list()]


def test_encoder_job_hyperparameters_map_to_contrastive_fine_tuning(fake_server):
    server = fake_server()
    client = server.client(server.key("acme"))
    train = upload(client, PAIRS)
    auto = wait_for(client, client.fine_tuning.jobs.create(model=MINILM_L6, training_file=train.id).id)
    assert auto.status == "succeeded", auto.error
    # Every other pair of a batch is a negative: the auto batch is all 8 pairs (at most 32), and
    # 13 epochs show the model at least 100 pairs.
    assert (auto.hyperparameters.batch_size, auto.hyperparameters.n_epochs) == (8, 13)
    config = run_config(server, auto)
    assert config["method"]["name"] == "full" and config["method"]["objective"] == "contrastive"
    assert config["train"]["lr"] == pytest.approx(8e-5) and config["data"]["val_fraction"] == 0.1

    halved = client.fine_tuning.jobs.create(
        model=MINILM_L6, training_file=train.id, method=supervised(learning_rate_multiplier=0.5)
    )
    halved = wait_for(client, halved.id)
    assert run_config(server, halved)["train"]["lr"] == pytest.approx(4e-5)
    assert {auto.fine_tuned_model, halved.fine_tuned_model} <= {m.id for m in client.models.list()}

    # A fine-tuned encoder has no GGUF form; it is deleted like any fine-tune.
    gguf = httpx.get(
        f"{server.url}/models/{auto.fine_tuned_model}/content", headers={"Authorization": f"Bearer {client.api_key}"}
    )
    assert gguf.status_code == 400 and gguf.json()["error"]["code"] == "model_not_exportable"
    assert client.models.delete(auto.fine_tuned_model).deleted
    assert auto.fine_tuned_model not in [m.id for m in client.models.list()]


def test_bad_encoder_jobs_get_400(fake_server):
    server = fake_server()
    client = server.client(server.key("acme"))
    good = upload(client, PAIRS)
    rows = list(PAIRS)
    rows[2] = {"query": "a query without its document"}
    bad_train = upload(client, rows, "bad.jsonl")
    bad_valid = upload(client, [PAIRS[0], {"query": "q", "positive": 7}], "valid.jsonl")
    cases = [
        ({"training_file": bad_train.id}, "training_file", ["line 3", "positive", "missing key", bad_train.id]),
        (
            {"training_file": good.id, "validation_file": bad_valid.id},
            "validation_file",
            ["line 2", "positive", "expected a string", bad_valid.id],
        ),
        # Chat data is no pairs file: refused at its first line, as the trainer would.
        ({"training_file": upload(client, [{"messages": []}]).id}, "training_file", ["line 1", "query"]),
        ({"training_file": good.id, "method": {"type": "dpo", "dpo": {}}}, "method.type", ["dpo", "embedding"]),
    ]
    for request, param, words in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.fine_tuning.jobs.create(model=MINILM_L6, **request)
        error = caught.value.body
        assert error["param"] == param, error
        assert all(word in error["message"] for word in words) and "/files/" not in error["message"], error
    assert client.fine_tuning.jobs.list().data == []  # nothing was queued
