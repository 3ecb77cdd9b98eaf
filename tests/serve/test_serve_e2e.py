"""The service with the real trainer on the tiny test model: train, inspect, chat, resume, cancel."""

from __future__ import annotations

import io
import json
import signal
import time

import pytest
from serve_helpers import wait_for

from tunesmith.models import load_tokenizer


def chat_rows(n: int, offset: int = 0):
    return [
        {
            "messages": [
                {"role": "user", "content": f"Say the number {i}."},
                {"role": "assistant", "content": f"{i}"},
            ]
        }
        for i in range(offset, offset + n)
    ]


def upload(client, rows, name):
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune")


@pytest.fixture
def real_server(make_server, tiny_model_name):
    def make(args=(), home=None):
        return make_server(list(args), home=home)

    return make


def test_train_then_chat(real_server, tiny_model_name):
    server = real_server()
    client = server.client(server.key("acme"))
    train, valid = (
        upload(client, chat_rows(16), "train.jsonl"),
        upload(client, chat_rows(4, 50), "valid.jsonl"),
    )
    job = client.fine_tuning.jobs.create(
        model=tiny_model_name,
        training_file=train.id,
        validation_file=valid.id,
        suffix="numbers",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
    )
    job = wait_for(client, job.id, timeout=150)
    assert job.status == "succeeded", job.error
    assert job.trained_tokens > 0 and job.result_files and job.fine_tuned_model.startswith("ft:tiny-llama-test:org-")
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and all(isinstance(e.data["train_loss"], float) for e in metrics)
    assert any(isinstance(e.data.get("valid_loss"), float) for e in metrics)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].step_number == 4

    messages = [{"role": "user", "content": "Say the number 3."}]
    reply = client.chat.completions.create(model=job.fine_tuned_model, messages=messages, max_tokens=8, temperature=0)
    tokenizer = load_tokenizer(tiny_model_name)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert reply.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert 1 <= reply.usage.completion_tokens <= 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.model == job.fine_tuned_model

    stream = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=messages,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content  # greedy: streamed == non-streamed
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens

    base = client.chat.completions.create(model=tiny_model_name, messages=messages, max_tokens=4, temperature=0)
    assert base.usage.completion_tokens >= 1
    again = client.chat.completions.create(model=job.fine_tuned_model, messages=messages, max_tokens=8, temperature=0)
    assert again.choices[0].message.content == reply.choices[0].message.content  # adapter back after base
    text = client.completions.create(model=job.fine_tuned_model, prompt="The number", max_tokens=5, temperature=0)
    assert text.usage.completion_tokens <= 5 and text.choices[0].text is not None


def test_kill_restart_resume_and_cancel(real_server, tiny_model_name, tmp_path):
    home = tmp_path / "home"
    args = ["--train-override", "train.save_every=2", "--train-override", "train.eval_every=100"]
    server = real_server(args, home=home)
    client = server.client(server.key("acme"))
    train = upload(client, chat_rows(40), "train.jsonl")
    job = client.fine_tuning.jobs.create(
        model=tiny_model_name, training_file=train.id, hyperparameters={"n_epochs": 1, "batch_size": 1}
    )
    deadline = time.time() + 120
    while not client.fine_tuning.jobs.checkpoints.list(job.id).data:
        assert time.time() < deadline, client.fine_tuning.jobs.retrieve(job.id)
        time.sleep(0.3)
    server.kill(signal.SIGKILL)
    server = real_server(args, home=home)
    client = server.client(client.api_key)
    done = wait_for(client, job.id, timeout=150)
    assert done.status == "succeeded", done.error
    assert any(
        "resuming the job from the checkpoint" in e.message
        for e in client.fine_tuning.jobs.list_events(job.id, limit=200)
    )

    job = client.fine_tuning.jobs.create(
        model=tiny_model_name, training_file=train.id, hyperparameters={"n_epochs": 3, "batch_size": 1}
    )
    wait_for(client, job.id, ("running",), timeout=60)
    time.sleep(2)
    start = time.time()
    client.fine_tuning.jobs.cancel(job.id)
    assert wait_for(client, job.id, timeout=10).status == "cancelled"
    assert time.time() - start < 10
    reply = client.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert reply.usage.completion_tokens >= 1
