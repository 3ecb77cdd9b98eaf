"""Fine-tuning jobs on an encoder through the official openai SDK.

OpenAI's ``supervised`` method on an encoder is contrastive fine-tuning on query/positive pairs.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import openai
import pytest
import yaml
from serve_helpers import wait_for

from tunesmith.models import MINILM_L6

# The encoder tests' papers (tests/encoders), shared rather than copied.
sys.path.append(str(Path(__file__).parents[1] / "encoders"))
from encoder_helpers import PAPERS  # noqa: E402

PAIRS = [{"query": title, "positive": abstract} for title, abstract in PAPERS]


def upload(client, rows, name="pairs.jsonl"):
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune")


def supervised(**hyperparameters):
    return {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}


def run_config(server, job) -> dict:
    return yaml.safe_load((server.home / "runs" / job.id / "config.yaml").read_text())


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
