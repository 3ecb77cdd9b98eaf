"""Hostile and greedy clients against a real server (fake trainer): 4xx not 500, caps, deletes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile

import httpx
import openai
import pytest
from serve_helpers import wait_for
from test_serve_api import chat_rows, jsonl, upload

from tunesmith.data.store import store_root
from tunesmith.serve.store import Store

DEEP = "[" * 30_000 + "]" * 30_000  # under the body limit, over Python's recursion limit
HUGE_INT = "9" * 5_000  # over Python's 4,300-digit int parsing limit
LONG_FLOAT = "1" * 400 + ".5"  # parses as inf


def raw(**fields: str) -> str:
    """A JSON object from raw value texts: numbers no JSON encoder would write."""
    return "{" + ", ".join(f'"{key}": {value}' for key, value in fields.items()) + "}"


CHAT = {"model": '"tiny-llama-test"', "messages": '[{"role": "user", "content": "hi"}]'}
TEXT = {"model": '"tiny-llama-test"', "prompt": '"x"'}
JOB = {"model": '"tiny-llama-test"', "training_file": '"TRAIN"'}
HOSTILE = [  # (path, raw body, the param the 400 names)
    ("/chat/completions", DEEP, None),
    ("/fine_tuning/jobs", DEEP, None),
    ("/chat/completions", raw(**CHAT, max_tokens=HUGE_INT), None),
    ("/chat/completions", raw(**CHAT, seed="7" * 400), "seed"),
    ("/chat/completions", raw(**CHAT, temperature=LONG_FLOAT), "temperature"),
    ("/chat/completions", raw(**CHAT, temperature="NaN"), "temperature"),
    ("/completions", raw(**TEXT, seed="7" * 400), "seed"),
    ("/completions", raw(**TEXT, top_p="Infinity"), "top_p"),
    ("/fine_tuning/jobs", raw(**JOB, suffix='"abc\\n"'), "suffix"),
    ("/fine_tuning/jobs", raw(**JOB, seed="7" * 400), "seed"),
]


def chunked(data: bytes, size: int = 64 * 1024):
    for start in range(0, len(data), size):
        yield data[start : start + size]


def multipart(content: bytes, boundary: str = "XyZ") -> tuple[bytes, str]:
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def used_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_hostile_bodies_get_4xx_and_limits_hold_while_streaming(fake_server):
    limit = 100 * 1024
    server = fake_server(args=["--max-upload-mb", str(limit / 2**20), "--max-body-kb", "256"])
    key = server.key("acme")
    client = server.client(key)
    train = upload(client, chat_rows(2))
    http = httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=60,
    )
    for path, body, param in HOSTILE:
        response = http.post(path, content=body.replace("TRAIN", train.id))
        assert response.status_code == 400, (path, body[:80], response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and (param is None or error["param"] == param)

    # JSON over the body limit, declared or chunked (no Content-Length): 413 before it is all read.
    big = b'{"model": "x", "prompt": "' + b"a" * 300 * 1024 + b'"}'
    assert http.post("/completions", content=big).status_code == 413
    assert http.post("/completions", content=chunked(big)).status_code == 413

    # A chunked upload ten times the limit: 413, and no byte of it left in files/ or the temp folder.
    files_before, temp_before = used_bytes(server.home / "files"), shutil.disk_usage(tempfile.gettempdir()).used
    body, content_type = multipart(jsonl(chat_rows(1)) * (10 * limit // len(jsonl(chat_rows(1)))))
    response = http.post("/files", content=chunked(body), headers={"Content-Type": content_type})
    assert response.status_code == 413 and response.json()["error"]["code"] == "file_too_large", response.text
    assert used_bytes(server.home / "files") == files_before
    assert shutil.disk_usage(tempfile.gettempdir()).used - temp_before < limit
    body, content_type = multipart(jsonl(chat_rows(3)))
    response = http.post("/files", content=chunked(body), headers={"Content-Type": content_type})
    assert response.status_code == 200 and response.json()["bytes"] == len(jsonl(chat_rows(3))), response.text
    assert client.files.content(response.json()["id"]).content == jsonl(chat_rows(3))
    assert sorted(p.name for p in (server.home / "files").iterdir()) == sorted(
        f"{f.id}.jsonl" for f in client.files.list()
    )


def _stores_of(path) -> list:
    """The token stores (data/store.py) built from the file at `path`, in the home the server shares."""
    metas = store_root().glob("*/meta.json") if store_root().is_dir() else []
    return [m.parent for m in metas if str(path) in json.loads(m.read_text())["files"]]


def test_job_cap_and_deleting_what_a_job_uses(fake_server):
    server = fake_server(args=["--max-jobs-per-org", "2"], env={"FAKE_STEP_SECONDS": "0.2"})
    acme, other = server.client(server.key("acme")), server.client(server.key("other"))
    train = upload(acme, chat_rows(10))
    hyper = {"n_epochs": 1, "batch_size": 1}
    jobs = [acme.fine_tuning.jobs.create(model="tiny-llama-test", training_file=train.id, hyperparameters=hyper)]
    jobs.append(acme.fine_tuning.jobs.create(model="tiny-llama-test", training_file=train.id, hyperparameters=hyper))
    with pytest.raises(openai.RateLimitError) as info:
        acme.fine_tuning.jobs.create(model="tiny-llama-test", training_file=train.id)
    assert info.value.response.headers["retry-after"] == "60"
    assert info.value.body["code"] == "rate_limit_exceeded"
    assert other.fine_tuning.jobs.create(  # one organisation's cap is not another's
        model="tiny-llama-test", training_file=upload(other, chat_rows(2)).id, hyperparameters=hyper
    )
    with pytest.raises(openai.ConflictError):
        acme.files.delete(train.id)
    assert (server.home / "files" / f"{train.id}.jsonl").is_file()

    done = [wait_for(acme, job.id) for job in jobs]
    assert [job.status for job in done] == ["succeeded", "succeeded"], [job.error for job in done]
    uploaded = server.home / "files" / f"{train.id}.jsonl"
    assert _stores_of(uploaded)  # validating the jobs tokenized it (the store the trainer then maps)
    assert acme.files.delete(train.id).deleted
    assert not uploaded.exists()
    assert not _stores_of(uploaded)  # its tokens went with it
    run = server.home / "runs" / done[0].id / "out"
    assert (run / "adapter").is_dir()
    assert acme.models.delete(done[0].fine_tuned_model).deleted
    assert not run.exists()  # adapter, checkpoints and exports: the disk is freed


def test_non_finite_metrics_stay_readable(fake_server):
    server = fake_server(env={"FAKE_TRAINER_MODE": "nan"})
    client = server.client(server.key("acme"))
    job = client.fine_tuning.jobs.create(
        model="tiny-llama-test", training_file=upload(client, chat_rows(4)).id, hyperparameters={"n_epochs": 1}
    )
    wait_for(client, job.id)
    metrics = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
    assert metrics and all(e.data["train_loss"] is None and e.data["grad_norm"] is None for e in metrics)
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data  # their metrics render too


def test_keys_list_and_revoke(fake_server):
    server = fake_server()
    key = server.key("acme")
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert http.get("/files").status_code == 200
    cli = [sys.executable, "-m", "tunesmith.serve.cli", "keys"]
    listed = subprocess.run([*cli, "list", "--home", str(server.home)], capture_output=True, text=True, check=True)
    (line,) = listed.stdout.splitlines()
    prefix, org = line.split()[:2]
    assert org == "acme" and key not in listed.stdout
    assert subprocess.run([*cli, "revoke", "nothing-like-it", "--home", str(server.home)]).returncode == 2
    subprocess.run([*cli, "revoke", prefix, "--home", str(server.home)], check=True)
    response = http.get("/files")
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert Store(server.home).list_keys() == []


def test_orphan_uploads_are_removed_at_start(make_server, tmp_path):
    home = tmp_path / "home"
    (home / "files").mkdir(parents=True)
    (home / "files" / ".upload-file-abc").write_bytes(b"half an upload")
    (home / "files" / "file-unregistered.csv").write_bytes(b"step\n")
    make_server(home=home)
    assert list((home / "files").iterdir()) == []
