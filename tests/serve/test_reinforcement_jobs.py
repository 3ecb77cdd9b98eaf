"""Reinforcement jobs through the official openai SDK: OpenAI's `method: {"type": "reinforcement"}`
shape, the GRPO trainer on the tiny model, and graders, files and hyperparameters that cannot work
refused when the job is created."""

from __future__ import annotations

import csv
import io
import json

import openai
import pytest
from serve_helpers import wait_for

from tunesmith.serve.jobs.policy import group_size, resolve_hyperparameters

GRADER = {
    "type": "string_check",
    "name": "has_letter",
    "operation": "ilike",
    "input": "{{sample.output_text}}",
    "reference": "{{item.letter}}",
    "pass_threshold": 1,
}


def prompts(n: int, offset: int = 0):
    return [
        {"messages": [{"role": "user", "content": f"Write a word with the letter {c}."}], "letter": c}
        for c in "etaoinshrdlu"[offset : offset + n]
    ]


def upload(client, rows, name="prompts.jsonl"):
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune")


def reinforcement(grader=GRADER, **hyperparameters):
    return {"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": hyperparameters}}


def test_auto_reinforcement_hyperparameters():
    resolved = resolve_hyperparameters({"method": "reinforcement", "grader": GRADER}, 40, n_train=36)
    # n_epochs, batch_size and the learning rate as for supervised jobs: 3 epochs of 36 prompts, 1 a step
    assert resolved == {
        "n_epochs": 3,
        "batch_size": 1,
        "learning_rate_multiplier": 1.0,
        "method": "reinforcement",
        "grader": GRADER,
        "compute_multiplier": 1.0,
        "eval_interval": 11,  # a tenth of the 108 steps, rounded up
        "eval_samples": 1,
        "reasoning_effort": "default",
    }
    given = {"method": "reinforcement", "grader": GRADER, "compute_multiplier": 2.0, "eval_interval": 5}
    assert resolve_hyperparameters(given, 40)["eval_interval"] == 5
    assert [group_size(c) for c in (0.01, 0.5, 1.0, 2.0, 10)] == [2, 2, 4, 8, 40]


def test_reinforcement_job_trains_and_reports_rewards(make_server, tiny_model_name):
    # Short answers keep the rollouts fast; an rl.* override applies to reinforcement jobs only.
    server = make_server(["--train-override", "rl.max_new_tokens=3"])
    client = server.client(server.key("acme"))
    train, valid = upload(client, prompts(4)), upload(client, prompts(2, 4), "valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model=tiny_model_name,
        training_file=train.id,
        validation_file=valid.id,
        method=reinforcement(n_epochs=1, batch_size=2, compute_multiplier=0.5, eval_interval=2, eval_samples=2),
    )
    assert job.method.type == "reinforcement" and job.method.reinforcement.grader.name == "has_letter"
    assert job.method.reinforcement.hyperparameters.compute_multiplier == 0.5
    assert job.method.reinforcement.hyperparameters.reasoning_effort == "default"
    job = wait_for(client, job.id, timeout=150)
    assert job.status == "succeeded", job.error
    assert job.method.reinforcement.hyperparameters.eval_samples == 2 and job.fine_tuned_model

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    assert any("compute_multiplier=0.5 (2 answers per prompt)" in e.message for e in events)
    metrics = [e for e in events if e.type == "metrics"]
    trained = [e for e in metrics if "train_reward" in e.data]
    assert [e.data["step"] for e in trained] == [2, 1]  # newest first
    for event in trained:
        assert "reward=" in event.message and "pass rate=" in event.message
        assert 0.0 <= event.data["train_reward"] <= 1.0 and 0.0 <= event.data["train_pass_rate"] <= 1.0
    # eval_interval=2: step 2 was evaluated, step 1 was not
    assert 0.0 <= trained[0].data["val_reward"] <= 1.0 and "validation reward=" in trained[0].message
    assert "val_reward" not in trained[1].data and "validation" not in trained[1].message

    (result,) = job.result_files
    rows = list(csv.DictReader(io.StringIO(client.files.content(result).text)))
    assert {"train_reward", "train_pass_rate", "valid_reward", "valid_pass_rate", "train_loss"} <= rows[0].keys()
    assert [int(r["step"]) for r in rows] == [0, 1, 2]  # step 0: the base model's validation reward
    for row in rows[1:]:
        assert 0.0 <= float(row["train_reward"]) <= 1.0 and 0.0 <= float(row["train_pass_rate"]) <= 1.0
    assert [r["valid_reward"] != "" for r in rows] == [True, False, True]
    assert all(0.0 <= float(r["valid_reward"]) <= 1.0 for r in rows if r["valid_reward"])

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert checkpoints and 0.0 <= checkpoints[0].metrics.to_dict()["train_reward"] <= 1.0


PYTHON = {"type": "python", "name": "py", "source": "def grade(sample, item):\n    return 1.0\n"}


def bad_request(client, **create) -> dict:
    with pytest.raises(openai.BadRequestError) as info:
        client.fine_tuning.jobs.create(**create)
    return info.value.body


def test_what_cannot_train_is_refused_at_creation(fake_server, tiny_model_name):
    server = fake_server()
    client = server.client(server.key("acme"))
    train = upload(client, prompts(4))
    create = {"model": tiny_model_name, "training_file": train.id}

    graders = [  # (grader, param, message)
        (
            {**PYTHON, "source": "def grade(sample, item)\n    return 1"},
            "method.reinforcement.grader.source",
            "the source does not parse: line 1",
        ),
        ({"type": "label_maker", "name": "x"}, "method.reinforcement.grader.type", "unknown grader type"),
        ({**GRADER, "reference": None}, "method.reinforcement.grader.reference", "reference"),
        (
            {"type": "multi", "name": "m", "graders": {"a": GRADER}, "calculate_output": "a +"},
            "method.reinforcement.grader.calculate_output",
            "calculate_output",
        ),
    ]
    for grader, param, message in graders:
        body = bad_request(client, **create, method=reinforcement(grader))
        assert body["param"] == param and body["code"] == "invalid_grader", body
        assert message in body["message"], body

    body = bad_request(client, **create, method=reinforcement(reasoning_effort="high"))
    assert body["param"] == "method.reinforcement.hyperparameters.reasoning_effort"
    assert "no reasoning models here" in body["message"]

    rows = prompts(4)
    del rows[1]["letter"]
    lacking = upload(client, rows, "lacking.jsonl")
    body = bad_request(client, model=tiny_model_name, training_file=lacking.id, method=reinforcement())
    assert body["param"] == "training_file" and body["code"] == "invalid_training_file"
    assert lacking.id in body["message"] and "line 2: letter: the grader reads this field" in body["message"], body
    python_reads = {**PYTHON, "source": "def grade(sample, item):\n    return float(item['letter'] in 'ab')\n"}
    body = bad_request(
        client, **create, validation_file=lacking.id, method=reinforcement(python_reads)
    )  # a python grader's item["key"] reads count too, in the validation file as well
    assert body["param"] == "validation_file" and "line 2: letter" in body["message"], body
    chat = upload(client, [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
    body = bad_request(client, model=tiny_model_name, training_file=chat.id, method=reinforcement(PYTHON))
    assert "line 1: messages[1].role: the prompt must end with a user message" in body["message"], body

    body = bad_request(client, model="minilm-l6", training_file=train.id, method=reinforcement())
    assert body["param"] == "method.type" and "'reinforcement' tunes a decoder" in body["message"], body
    assert not list(client.fine_tuning.jobs.list())  # nothing was queued
