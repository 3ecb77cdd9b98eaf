"""The rest of OpenAI's fine-tuning job API through the official openai SDK (real server, fake
trainer): pause and resume, auto-pagination of every list, the metadata filter."""

from __future__ import annotations

import json
import time

import openai
import pytest
from serve_helpers import wait_for
from test_serve_api import chat_rows, upload

ONE_EPOCH = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 1}}}


def test_a_paused_job_keeps_its_checkpoint_frees_its_slot_and_resumes_from_it(fake_server):
    server = fake_server(env={"FAKE_STEP_SECONDS": "0.2"}, args=["--max-running", "1"])
    client = server.client(server.key("acme"))
    long = client.fine_tuning.jobs.create(
        model="tiny-llama-test", training_file=upload(client, chat_rows(30)).id, method=ONE_EPOCH
    )
    wait_for(client, long.id, statuses=("running",), timeout=60)
    deadline = time.monotonic() + 60
    while not client.fine_tuning.jobs.checkpoints.list(long.id).data and time.monotonic() < deadline:
        time.sleep(0.1)
    other = client.fine_tuning.jobs.create(
        model="tiny-llama-test", training_file=upload(client, chat_rows(4)).id, method=ONE_EPOCH
    )

    paused = client.fine_tuning.jobs.pause(long.id)
    assert paused.status == "paused"
    assert wait_for(client, other.id).status == "succeeded"  # the paused job's slot went to the other one
    assert client.fine_tuning.jobs.retrieve(long.id).status == "paused"
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.resume(other.id)
    assert caught.value.body["code"] == "job_not_resumable"

    assert client.fine_tuning.jobs.resume(long.id).status == "queued"
    assert wait_for(client, long.id).status == "succeeded"
    out = server.home / "runs" / long.id / "out"
    kept = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(long.id, limit=100)]
    assert (
        int((out / "resumed_from").read_text()) in kept and json.loads((out / "argv.json").read_text())[1] == "--resume"
    )
    messages = [e.message for e in client.fine_tuning.jobs.list_events(long.id, limit=100)]
    assert any(m.startswith("Fine-tuning job paused; it keeps its checkpoint at step") for m in messages)
    assert any(m.startswith("Fine-tuning job continues from the checkpoint at step") for m in messages)
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.pause(long.id)
    assert caught.value.body["code"] == "job_not_pausable"


def test_every_list_pages_through_the_sdks_auto_pagination(fake_server):
    server = fake_server()
    client = server.client(server.key("acme"))
    files = [upload(client, chat_rows(8), name=f"{i}.jsonl").id for i in range(3)]
    jobs = [
        client.fine_tuning.jobs.create(model="tiny-llama-test", training_file=f, metadata={"team": t}).id
        for f, t in zip(files, ["red", "blue", "red"], strict=True)
    ]
    for job in jobs:
        wait_for(client, job)
    results = [f.id for f in client.files.list(purpose="fine-tune-results")]
    lists = [  # (the SDK's auto-paginating list with a small page, every id it must give, newest first)
        (client.files.list(purpose="fine-tune", limit=1), files[::-1]),
        (client.fine_tuning.jobs.list(limit=1), jobs[::-1]),
        (client.fine_tuning.jobs.list_events(jobs[0], limit=2), None),
        (client.fine_tuning.jobs.checkpoints.list(jobs[0], limit=1), None),
    ]
    for listing, expected in lists:
        got = [item.id for item in listing]
        assert listing.has_more and len(got) > len(listing.data) and len(set(got)) == len(got)
        if expected is not None:
            assert got == expected
    whole_events = client.fine_tuning.jobs.list_events(jobs[0], limit=1000).data
    assert [e.id for e in client.fine_tuning.jobs.list_events(jobs[0], limit=2)] == [e.id for e in whole_events]
    assert len(results) == 3


METADATA = [  # (filter, jobs it lists, by their team)
    ({"team": "red"}, ["red", "red"]),
    ({"team": "blue"}, ["blue"]),
    ({"team": "green"}, []),
    ({"team": "red", "stage": "a"}, ["red"]),
]


def test_jobs_list_filters_by_metadata(fake_server):
    server = fake_server()
    client = server.client(server.key("acme"))
    train = upload(client, chat_rows(8)).id
    for metadata in ({"team": "red", "stage": "a"}, {"team": "blue"}, {"team": "red"}, None):
        client.fine_tuning.jobs.create(model="tiny-llama-test", training_file=train, metadata=metadata)
    for where, teams in METADATA:
        listed = client.fine_tuning.jobs.list(metadata=where, limit=100).data
        assert sorted(job.metadata["team"] for job in listed) == sorted(teams), where


def test_a_wandb_integration_sends_the_jobs_metrics_to_its_project(fake_server):
    server = fake_server()
    client = server.client(server.key("acme"))
    wandb = {"project": "support-bot", "tags": ["v2"]}
    job = client.fine_tuning.jobs.create(
        model="tiny-llama-test",
        training_file=upload(client, chat_rows(4)).id,
        integrations=[{"type": "wandb", "wandb": wandb}],
    )
    assert wait_for(client, job.id).status == "succeeded"
    (integration,) = client.fine_tuning.jobs.retrieve(job.id).integrations
    assert integration.type == "wandb" and integration.wandb.project == "support-bot"
    config = (server.home / "runs" / job.id / "config.yaml").read_text()
    assert "report_to:\n  - wandb" in config or "report_to: [wandb]" in config or "- wandb" in config
    assert "project: support-bot" in config and f"name: {job.id}" in config


def test_integrations_are_checked_at_creation(monkeypatch):
    import importlib.util

    from tunesmith.serve.errors import APIError
    from tunesmith.serve.jobs.request import JobRequest
    from tunesmith.serve.routes.params import parse

    base = {"model": "tiny-llama-test", "training_file": "file-x"}
    with pytest.raises(APIError, match="integrations"):
        parse(JobRequest, {**base, "integrations": [{"type": "slack", "slack": {}}]})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(APIError, match=r"wandb is not installed on this server \(pip install 'tunesmith\[wandb\]'\)"):
        parse(JobRequest, {**base, "integrations": [{"type": "wandb", "wandb": {"project": "p"}}]})
