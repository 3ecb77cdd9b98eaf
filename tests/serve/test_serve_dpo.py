"""DPO jobs through the official openai SDK: OpenAI's `method: {"type": "dpo"}` shape, the real
trainer on the tiny model, and preference files refused with line numbers."""

from __future__ import annotations

import io
import json

import openai
import pytest
from serve_helpers import wait_for


def pair_rows(n: int):
    return [
        {
            "input": {"messages": [{"role": "user", "content": f"Is {i} even?"}]},
            "preferred_output": [{"role": "assistant", "content": "Yes." if i % 2 == 0 else "No."}],
            "non_preferred_output": [{"role": "assistant", "content": "I will not say."}],
        }
        for i in range(n)
    ]


def upload(client, rows, name="pairs.jsonl"):
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune")


def dpo(**hyperparameters):
    return {"type": "dpo", "dpo": {"hyperparameters": hyperparameters}}


def test_sft_then_dpo_job_trains_reports_and_serves(make_server, tiny_model_name):
    server = make_server([])
    client = server.client(server.key("acme"))
    sft_rows = [{"prompt": f"Is {i} even?", "completion": "Yes." if i % 2 == 0 else "No."} for i in range(8)]
    sft = client.fine_tuning.jobs.create(
        model=tiny_model_name,
        training_file=upload(client, sft_rows, "sft.jsonl").id,
        hyperparameters={"n_epochs": 1, "batch_size": 4},
    )
    sft = wait_for(client, sft.id, timeout=150)
    assert sft.status == "succeeded", sft.error

    train, valid = upload(client, pair_rows(16)), upload(client, pair_rows(4), "valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model=sft.fine_tuned_model,
        training_file=train.id,
        validation_file=valid.id,
        method=dpo(beta=0.2, n_epochs=1, batch_size=4),
    )
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    job = wait_for(client, job.id, timeout=150)
    assert job.status == "succeeded", job.error
    assert job.model == sft.fine_tuned_model and job.method.dpo.hyperparameters.n_epochs == 1
    assert job.fine_tuned_model.startswith("ft:tiny-llama-test:org-") and job.fine_tuned_model != sft.fine_tuned_model
    metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
    assert metrics and all(isinstance(m["train_loss"], float) for m in metrics)
    assert any(isinstance(m.get("val_reward_accuracy"), float) for m in metrics)
    reply = client.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": "Is 2 even?"}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None and reply.model == job.fine_tuned_model
    with pytest.raises(openai.BadRequestError, match="or a fine-tuned model of your organisation"):
        client.fine_tuning.jobs.create(model="ft:other:org::x", training_file=train.id, method=dpo())


def test_bad_dpo_file_fails_validation_with_line_numbers(make_server, tiny_model_name):
    server = make_server([])
    client = server.client(server.key("acme"))
    rows = pair_rows(6)
    del rows[1]["non_preferred_output"]
    rows[3]["non_preferred_output"] = rows[3]["preferred_output"]
    train = upload(client, rows)
    job = client.fine_tuning.jobs.create(model=tiny_model_name, training_file=train.id, method=dpo())
    job = wait_for(client, job.id)
    assert job.status == "failed" and job.error.param == "training_file"
    message = job.error.message
    assert "lines 2, 4" in message and "non_preferred_output: missing key" in message, message
    assert "identical to preferred_output" in message and train.id in message

    # A supervised job on pairs is told what the file is; beta is a DPO hyperparameter only.
    job = wait_for(client, client.fine_tuning.jobs.create(model=tiny_model_name, training_file=train.id).id)
    assert job.status == "failed" and "method.name=dpo" in job.error.message
    with pytest.raises(openai.BadRequestError, match="unknown hyperparameter method.supervised.hyperparameters.beta"):
        client.fine_tuning.jobs.create(
            model=tiny_model_name,
            training_file=train.id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}},
        )
