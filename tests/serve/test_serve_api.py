"""The service against a real server process, with the fake trainer (tests/serve/fake_trainer.py).

The real trainer's end-to-end flow is in test_serve_e2e.py.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from serve_helpers import alive, wait_for

from tunesmith.serve.jobs.policy import resolve_hyperparameters
from tunesmith.serve.store import Store


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def chat_rows(n: int, offset: int = 0):
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{2 * i}"},
            ]
        }
        for i in range(offset, offset + n)
    ]


def upload(client, rows, name="train.jsonl"):
    return client.files.create(file=(name, io.BytesIO(jsonl(rows))), purpose="fine-tune")


def test_auto_hyperparameters_rule():
    # (requested, n_examples) -> resolved
    rows = [
        ({}, 10, {"n_epochs": 10, "batch_size": 1, "learning_rate_multiplier": 1.0}),
        ({}, 1000, {"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 1.0}),
        ({}, 100_000, {"n_epochs": 1, "batch_size": 32, "learning_rate_multiplier": 1.0}),
        (
            {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5},
            10,
            {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5},
        ),
        ({"n_epochs": "auto"}, 1, {"n_epochs": 25, "batch_size": 1, "learning_rate_multiplier": 1.0}),
    ]
    for requested, n, expected in rows:
        assert resolve_hyperparameters(requested, n) == expected, (requested, n)


def test_flow_with_fake_trainer(fake_server):
    server = fake_server()
    key = server.key("acme")
    client = server.client(key)
    train = upload(client, chat_rows(16))
    valid = upload(client, chat_rows(4, 100), "valid.jsonl")
    assert train.id.startswith("file-") and train.filename == "train.jsonl" and train.purpose == "fine-tune"
    assert {f.id for f in client.files.list()} == {train.id, valid.id}
    assert client.files.content(train.id).content == jsonl(chat_rows(16))

    job = client.fine_tuning.jobs.create(
        model="tiny-llama-test",
        training_file=train.id,
        validation_file=valid.id,
        suffix="adder",
        seed=7,
        metadata={"team": "a"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
    )
    assert job.status == "validating_files" and job.seed == 7 and job.metadata == {"team": "a"}
    job = wait_for(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4
    assert job.hyperparameters.learning_rate_multiplier == 1.0
    org_id = Store(server.home).org_for_key(key)["id"]
    assert job.fine_tuned_model == f"ft:tiny-llama-test:{org_id}:adder:{job.id[-8:]}"
    assert job.trained_tokens == 8000 and job.finished_at and job.estimated_finish is None

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in reversed(metrics)] == list(range(1, 9))
    assert all(isinstance(e.data["train_loss"], float) for e in metrics)
    assert any("valid_loss" in e.data for e in metrics)
    messages = " | ".join(e.message for e in events)
    for text in (
        "Created fine-tuning job",
        "Validated training file",
        "started",
        "Checkpoint created",
        "successfully completed",
    ):
        assert text in messages
    page = client.fine_tuning.jobs.list_events(job.id, limit=3)
    assert len(page.data) == 3 and page.has_more
    nxt = client.fine_tuning.jobs.list_events(job.id, limit=3, after=page.data[-1].id)
    assert nxt.data[0].id == events[3].id

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [8, 6, 4, 2]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-8"
    assert checkpoints[0].metrics.train_loss == pytest.approx(0.25)

    csv = client.files.content(job.result_files[0]).text.splitlines()
    assert csv[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy" and len(csv) == 9
    ids = [m.id for m in client.models.list()]
    assert "tiny-llama-test" in ids and job.fine_tuned_model in ids
    assert client.models.retrieve(job.fine_tuned_model).id == job.fine_tuned_model
    assert [j.id for j in client.fine_tuning.jobs.list()] == [job.id]

    assert client.models.delete(job.fine_tuned_model).deleted
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(job.fine_tuned_model)
    assert client.files.delete(train.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(train.id)


def test_bad_lines_fail_the_job_with_line_numbers(fake_server):
    server = fake_server()
    client = server.client(server.key("acme"))
    rows = chat_rows(6)
    rows[1] = {"messages": [{"role": "bot", "content": "hi"}]}
    rows[4] = {"prompt": "no messages here"}
    train = upload(client, rows)
    job = wait_for(client, client.fine_tuning.jobs.create(model="tiny-llama-test", training_file=train.id).id)
    assert job.status == "failed"
    assert job.error.param == "training_file" and job.error.code == "invalid_training_file"
    assert "lines 2, 5" in job.error.message and "role" in job.error.message, job.error.message
    assert train.id in job.error.message and "/files/" not in job.error.message


def test_cancel_crash_and_queue(fake_server):
    server = fake_server(env={"FAKE_STEP_SECONDS": "0.5"})
    client = server.client(server.key("acme"))
    train = upload(client, chat_rows(40))
    hyper = {"n_epochs": 1, "batch_size": 1}
    first = client.fine_tuning.jobs.create(model="tiny-llama-test", training_file=train.id, hyperparameters=hyper)
    second = client.fine_tuning.jobs.create(model="tiny-llama-test", training_file=train.id, hyperparameters=hyper)
    wait_for(client, first.id, ("running",))
    # Validation of the second job's files may lag on a loaded machine: wait for it to be queued, then
    # check it stays queued behind the running one (one at a time).
    wait_for(client, second.id, ("queued", "running"), timeout=30)
    time.sleep(1.5)
    assert client.fine_tuning.jobs.retrieve(second.id).status == "queued"
    assert client.fine_tuning.jobs.retrieve(first.id).status == "running"
    start = time.time()
    client.fine_tuning.jobs.cancel(first.id)
    job = wait_for(client, first.id, ("cancelled", "succeeded", "failed"), timeout=10)
    assert job.status == "cancelled" and time.time() - start < 10
    running = wait_for(client, second.id, ("running",), timeout=10)
    assert running.status == "running"
    assert client.fine_tuning.jobs.cancel(second.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(first.id)
    assert client.models.list().data  # still serving


def test_crash_fails_the_job_and_user_error_names_the_file(fake_server, tmp_path):
    server = fake_server(env={"FAKE_TRAINER_MODE": "crash"})
    client = server.client(server.key("acme"))
    train = upload(client, chat_rows(8))
    job = wait_for(
        client,
        client.fine_tuning.jobs.create(
            model="tiny-llama-test", training_file=train.id, hyperparameters={"n_epochs": 1, "batch_size": 1}
        ).id,
    )
    assert job.status == "failed" and job.error.code == "training_crashed"
    assert "signal 6" in job.error.message and "fake out of memory" in job.error.message
    # The trainer's stderr names its run folder: the client reads it relative to the server's home.
    assert job.error.message.endswith(f"fake out of memory saving runs/{job.id}/out/checkpoints"), job.error.message
    events = " ".join(e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100))
    assert "saving runs/" in events and str(server.home) not in events
    server.kill(signal.SIGTERM)

    server = fake_server(env={"FAKE_TRAINER_MODE": "usererror"}, home=tmp_path / "home2")
    client = server.client(server.key("acme"))
    train = upload(client, chat_rows(8))
    job = wait_for(client, client.fine_tuning.jobs.create(model="tiny-llama-test", training_file=train.id).id)
    assert job.status == "failed" and job.error.param == "training_file"
    assert job.error.message.startswith(f"{train.id} (train.jsonl): lines 2, 5")


def test_sigkill_restart_resumes_from_checkpoint(fake_server, tmp_path):
    home = tmp_path / "home"
    env = {"FAKE_STEP_SECONDS": "0.3"}
    server = fake_server(env=env, home=home, args=["--train-override", "train.save_every=2"])
    client = server.client(server.key("acme"))
    train = upload(client, chat_rows(12))
    queued_rows = chat_rows(2)
    job = client.fine_tuning.jobs.create(
        model="tiny-llama-test", training_file=train.id, hyperparameters={"n_epochs": 1, "batch_size": 1}
    )
    later = client.fine_tuning.jobs.create(
        model="tiny-llama-test",
        training_file=upload(client, queued_rows).id,
        hyperparameters={"n_epochs": 1, "batch_size": 1},
    )
    deadline = time.time() + 30
    while not client.fine_tuning.jobs.checkpoints.list(job.id).data:
        assert time.time() < deadline
        time.sleep(0.2)
    orphan = Store(home).job(None, job.id)["pid"]
    server.kill(signal.SIGKILL)  # its trainer lives on, holding the run folder's lock
    server = fake_server(env=env, home=home, args=["--train-override", "train.save_every=2"])
    client = server.client(client.api_key)
    done = wait_for(client, job.id)
    assert done.status == "succeeded", done.error
    resumed_from = int((home / "runs" / job.id / "out" / "resumed_from").read_text())
    assert resumed_from >= 2
    assert any("resuming" in e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100))
    steps = [e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
    assert sorted(steps) == list(range(1, 13))  # no step reported twice
    assert wait_for(client, later.id).status == "succeeded"
    assert not alive(orphan)  # killed by the restarted server before it resumed


def test_organisations_are_isolated(fake_server):
    server = fake_server()
    a, b = server.client(server.key("alpha")), server.client(server.key("beta"))
    train = upload(a, chat_rows(4))
    job = wait_for(
        a,
        a.fine_tuning.jobs.create(
            model="tiny-llama-test", training_file=train.id, hyperparameters={"n_epochs": 1, "batch_size": 2}
        ).id,
    )
    assert job.status == "succeeded", job.error
    model = job.fine_tuned_model
    assert b.files.list().data == [] and b.fine_tuning.jobs.list().data == []
    assert model not in [m.id for m in b.models.list()]
    calls = [
        lambda c, x: c.files.retrieve(x),
        lambda c, x: c.files.content(x),
        lambda c, x: c.files.delete(x),
    ]
    for call in calls:
        for ident in (train.id, "file-doesnotexist"):
            with pytest.raises(openai.NotFoundError) as info:
                call(b, ident)
            assert "No such file" in info.value.message
    for call in (
        lambda c, x: c.fine_tuning.jobs.retrieve(x),
        lambda c, x: c.fine_tuning.jobs.cancel(x),
        lambda c, x: c.fine_tuning.jobs.list_events(x),
        lambda c, x: c.fine_tuning.jobs.checkpoints.list(x),
    ):
        for ident in (job.id, "ftjob-doesnotexist"):
            with pytest.raises(openai.NotFoundError):
                call(b, ident)
    for call in (
        lambda c, x: c.models.retrieve(x),
        lambda c, x: c.models.delete(x),
        lambda c, x: c.chat.completions.create(model=x, messages=[{"role": "user", "content": "hi"}]),
    ):
        with pytest.raises(openai.NotFoundError):
            call(b, model)
    with pytest.raises(openai.BadRequestError) as info:
        b.fine_tuning.jobs.create(model="tiny-llama-test", training_file=train.id)
    assert info.value.body["param"] == "training_file"
    assert a.files.retrieve(train.id).id == train.id and a.models.retrieve(model).id == model


BAD_JOBS = [  # (body, param expected in the error)
    ({"training_file": "TRAIN"}, "model"),
    ({"model": "tiny-llama-test"}, "training_file"),
    ({"model": "no-such-model", "training_file": "TRAIN"}, "model"),
    ({"model": 5, "training_file": "TRAIN"}, "model"),
    ({"model": "tiny-llama-test", "training_file": "file-missing"}, "training_file"),
    (
        {"model": "tiny-llama-test", "training_file": "TRAIN", "hyperparameters": {"n_epochs": -1}},
        "hyperparameters.n_epochs",
    ),
    (
        {"model": "tiny-llama-test", "training_file": "TRAIN", "hyperparameters": {"batch_size": "big"}},
        "hyperparameters.batch_size",
    ),
    (
        {
            "model": "tiny-llama-test",
            "training_file": "TRAIN",
            "method": {
                "type": "supervised",
                "supervised": {"hyperparameters": {"learning_rate_multiplier": 0}},
            },
        },
        "method.supervised.hyperparameters.learning_rate_multiplier",
    ),
    ({"model": "tiny-llama-test", "training_file": "TRAIN", "method": {"type": "rlhf"}}, "method.type"),
    (
        {"model": "tiny-llama-test", "training_file": "TRAIN", "method": {"type": "reinforcement"}},
        "method.reinforcement.grader",
    ),
    ({"model": "tiny-llama-test", "training_file": "TRAIN", "method": {"type": ["dpo"]}}, "method.type"),
    ({"model": "tiny-llama-test", "training_file": "TRAIN", "method": "dpo"}, "method.type"),
    (
        {"model": "tiny-llama-test", "training_file": "TRAIN", "hyperparameters": {"n_epochs": 10**400}},
        "hyperparameters.n_epochs",
    ),
    ({"model": "tiny-llama-test", "training_file": "TRAIN", "hyperparameters": {"beta": 0.1}}, "hyperparameters.beta"),
    ({"model": "tiny-llama-test", "training_file": "TRAIN", "seed": "x"}, "seed"),
    ({"model": "tiny-llama-test", "training_file": "TRAIN", "suffix": "a:b"}, "suffix"),
    ({"model": "tiny-llama-test", "training_file": "TRAIN", "epochs": 3}, "epochs"),
]


def test_malformed_requests_get_400(fake_server):
    server = fake_server()
    key = server.key("acme")
    client = server.client(key)
    train = upload(client, chat_rows(2))
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    for body, param in BAD_JOBS:
        body = {k: (train.id if v == "TRAIN" else v) for k, v in body.items()}
        response = http.post("/fine_tuning/jobs", json=body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error", error
    for request, status in [
        (dict(method="POST", url="/fine_tuning/jobs", content=b"{not json"), 400),
        (dict(method="POST", url="/fine_tuning/jobs", json=[1, 2]), 400),
        (dict(method="GET", url="/fine_tuning/jobs?limit=-3"), 400),
        (dict(method="GET", url="/fine_tuning/jobs?limit=abc"), 400),
        (dict(method="POST", url="/files", files={"file": ("a.jsonl", b"{}\n")}), 400),  # no purpose
        (dict(method="POST", url="/files", data={"purpose": "fine-tune"}), 400),  # no file
        (dict(method="POST", url="/files", json={"purpose": "fine-tune"}), 400),
        (
            dict(
                method="POST",
                url="/files",
                data={"purpose": "fine-tune"},
                files={"file": ("a.csv", b"a,b\n1,2\n")},
            ),
            400,
        ),
        (
            dict(method="POST", url="/files", data={"purpose": "fine-tune"}, files={"file": ("a.jsonl", b"")}),
            400,
        ),
        (
            dict(
                method="POST",
                url="/files",
                data={"purpose": "fine-tune"},
                files={"file": ("a.jsonl", b"[1]\n")},
            ),
            400,
        ),
        (
            dict(method="POST", url="/files", data={"purpose": "batch"}, files={"file": ("a.jsonl", b"{}\n")}),
            400,
        ),
        (dict(method="POST", url="/chat/completions", json={"model": "tiny-llama-test"}), 400),
        (
            dict(method="POST", url="/chat/completions", json={"model": "tiny-llama-test", "messages": "hi"}),
            400,
        ),
        (
            dict(
                method="POST",
                url="/chat/completions",
                json={
                    "model": "tiny-llama-test",
                    "messages": [{"role": "user", "content": "x"}],
                    "max_tokens": -1,
                },
            ),
            400,
        ),
        (
            dict(
                method="POST",
                url="/chat/completions",
                json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
            ),
            404,
        ),
        (dict(method="POST", url="/completions", json={"model": "tiny-llama-test", "prompt": 3}), 400),
        (dict(method="DELETE", url="/models/tiny-llama-test"), 400),
        (dict(method="GET", url="/no/such/route"), 404),
    ]:
        response = http.request(**request)
        assert response.status_code == status, (request, response.text)
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}, response.text
    response = http.post("/files", data={"purpose": "fine-tune"}, files={"file": ("a.jsonl", b"{}\nnope\n[]\n")})
    assert "line 2" in response.json()["error"]["message"] and "line 3" in response.json()["error"]["message"]
    assert client.files.list().data == [train]  # refused uploads leave nothing behind


def test_auth_and_upload_limit(fake_server):
    server = fake_server(args=["--max-upload-mb", "0.001"])
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        response = httpx.get(server.url + "/files", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    client = server.client(server.key("acme"))
    with pytest.raises(openai.APIStatusError) as info:
        upload(client, chat_rows(100))
    assert info.value.status_code == 413


def test_keys_create_cli(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunesmith.serve.cli",
            "keys",
            "create",
            "--org",
            "acme",
            "--home",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    key = out.stdout.strip()
    assert key.startswith("sk-ts-")
    from tunesmith.serve.store import Store

    store = Store(tmp_path)
    assert store.org_for_key(key)["name"] == "acme"
    assert key not in (tmp_path / "tunesmith.db").read_bytes().decode(errors="replace")
