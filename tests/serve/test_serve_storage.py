"""Disk: per-organisation quotas reserved while uploads arrive, a free-space floor, a full disk that
leaves the database intact and no job stuck, and retention of failed runs and export caches."""

from __future__ import annotations

import builtins
import errno
import io
import sqlite3
import sys
import threading
import time
import uuid

import httpx
import openai
import pytest
from serve_helpers import FAKE_TRAINER
from test_serve_api import chat_rows, jsonl, upload
from test_worker import add_job, wait

from tunesmith.serve import uploads
from tunesmith.serve.cli import main as serve_main
from tunesmith.serve.jobs import supervisor
from tunesmith.serve.jobs.supervisor import MAX_ATTEMPTS, Worker
from tunesmith.serve.storage import collect_garbage, parse_duration
from tunesmith.serve.store import Store, now

MIB = 1024 * 1024


def used_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def rows_of(size: int) -> bytes:
    """JSONL of about ``size`` bytes (valid chat examples)."""
    line = jsonl(chat_rows(1))
    return line * (size // len(line))


def slow_multipart(content: bytes, pieces: int = 20, pause: float = 0.05):
    """A multipart body sent chunked, a piece at a time: uploads that overlap in time."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()

    def body():
        yield head
        step = -(-len(content) // pieces)
        for start in range(0, len(content), step):
            time.sleep(pause)
            yield content[start : start + step]
        yield f"\r\n--{boundary}--\r\n".encode()

    return body(), f"multipart/form-data; boundary={boundary}"


def test_quota_is_reserved_while_uploads_arrive_and_refusals_leave_nothing(fake_server, tmp_path):
    quota = int(2.5 * MIB)
    temp = tmp_path / "server-tmp"  # the server's own temporary folder: anything spooled would show
    temp.mkdir()
    server = fake_server(args=["--storage-quota", str(quota), "--max-files", "2"], env={"TMPDIR": str(temp)})
    key = server.key("acme")
    client = server.client(key)
    files = server.home / "files"

    # Two uploads of 1.5 MiB at once: together over the quota, so one is refused as it arrives.
    results = []

    def send():
        body, content_type = slow_multipart(rows_of(int(1.5 * MIB)))
        with httpx.Client(timeout=60) as http:
            response = http.post(
                server.url + "/files",
                content=body,
                headers={"Authorization": f"Bearer {key}", "Content-Type": content_type},
            )
        results.append(response)

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 413], [r.text for r in results]
    refused = next(r for r in results if r.status_code == 413).json()["error"]
    assert refused["code"] == "storage_quota_exceeded" and refused["param"] == "file"
    assert f"quota is {quota} bytes" in refused["message"]
    stored = client.files.list().data
    assert len(stored) == 1 and used_bytes(files) == stored[0].bytes <= quota
    assert used_bytes(temp) == 0  # the refused bytes are nowhere

    # One more small file fits; a third file is over --max-files: 429, whatever its size.
    small = upload(client, chat_rows(2))
    with pytest.raises(openai.RateLimitError) as caught:
        upload(client, chat_rows(2))
    assert caught.value.response.json()["error"]["code"] == "rate_limit_exceeded"
    assert "2 files, its limit" in caught.value.response.json()["error"]["message"]
    assert sorted(p.name for p in files.iterdir()) == sorted(f"{f.id}.jsonl" for f in client.files.list())
    client.files.delete(small.id)
    client.files.delete(stored[0].id)
    again = client.files.create(file=("t.jsonl", io.BytesIO(rows_of(2 * MIB))), purpose="fine-tune")
    assert again.bytes <= quota  # deleting frees the quota

    other = server.client(server.key("globex"))  # a quota per organisation
    assert upload(other, chat_rows(2)).status == "processed"


def test_below_the_free_space_floor_uploads_and_jobs_are_refused(fake_server):
    server = fake_server(args=["--min-free-disk", str(2**62)])
    key = server.key("acme")
    client = server.client(key)
    with pytest.raises(openai.APIStatusError) as caught:
        upload(client, chat_rows(2))
    assert caught.value.status_code == 507
    assert caught.value.response.json()["error"]["code"] == "insufficient_storage"
    assert not list((server.home / "files").iterdir())
    store = Store(server.home)
    path = server.home / "files" / "file-given.jsonl"
    path.write_bytes(jsonl(chat_rows(4)))
    store.add_file("file-given", store.org_for_key(key)["id"], "t.jsonl", "fine-tune", path.stat().st_size, str(path))
    with pytest.raises(openai.APIStatusError) as caught:
        client.fine_tuning.jobs.create(model="tiny-llama-test", training_file="file-given")
    assert caught.value.status_code == 507 and "low on disk space" in caught.value.message
    assert client.fine_tuning.jobs.list().data == []


def _full_disk_open(real_open, when):
    def fake_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "b" in mode and ("w" in mode or "a" in mode) and when(str(file)):
            handle.close()
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return handle

    return fake_open


# (what runs out of space, the module whose write fails)
FULL = ["upload write", "database insert"]


@pytest.mark.parametrize("what", FULL)
def test_a_full_disk_answers_507_and_leaves_the_database_intact(tmp_path, monkeypatch, what):
    from fastapi.testclient import TestClient

    from tunesmith.serve.app import create_app
    from tunesmith.serve.settings import ServeSettings

    home = tmp_path / "home"
    key = Store(home).create_key("acme")
    app = create_app(ServeSettings(home=home, trainer_command=[sys.executable, str(FAKE_TRAINER)]))
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as http:

        def post():
            return http.post(
                "/v1/files", files={"file": ("t.jsonl", jsonl(chat_rows(3)))}, data={"purpose": "fine-tune"}
            )

        assert post().status_code == 200
        with monkeypatch.context() as patch:
            if what == "upload write":
                patch.setattr(uploads, "open", _full_disk_open(builtins.open, lambda _: True), raising=False)
            else:

                def full(*args, **kwargs):
                    raise sqlite3.OperationalError("database or disk is full")

                patch.setattr(Store, "add_file", full)
            response = post()
        assert response.status_code == 507, response.text
        assert response.json()["error"] == {
            "message": "the server is low on disk space: the disk is full; try again later",
            "type": "server_error",
            "param": None,
            "code": "insufficient_storage",
        }
        listed = http.get("/v1/files").json()["data"]
        assert len(listed) == 1 and sorted(p.name for p in (home / "files").iterdir()) == [f"{listed[0]['id']}.jsonl"]
        assert post().status_code == 200  # space is back: uploads work again
    with sqlite3.connect(home / "tunesmith.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_trainer_that_cannot_start_counts_its_attempts(tmp_path, monkeypatch):
    store = Store(tmp_path / "home")
    job_id = add_job(store, tmp_path, "running")  # as after a restart: the worker resumes it
    full = _full_disk_open(builtins.open, lambda path: path.endswith("stderr.log"))
    monkeypatch.setattr(supervisor, "open", full, raising=False)
    worker = Worker(store, [sys.executable, str(FAKE_TRAINER)], poll_seconds=0.05)
    worker.start()
    try:
        job = wait(lambda: (row := store.job(None, job_id))["status"] == "failed" and row, 20)
    finally:
        worker.stop()
    assert job["attempts"] == MAX_ATTEMPTS - 1 and job["error"]["code"] == "server_error"
    assert job["error"]["message"].startswith("could not start the trainer: [Errno 28] No space left on device")


@pytest.mark.parametrize(
    "text, seconds", [("7d", 7 * 86400), ("12h", 43200), ("30m", 1800), ("90s", 90), ("2", 172800)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_gc_frees_old_failed_runs_and_export_caches(tmp_path, capsys):
    store = Store(tmp_path / "home")
    kept, freed = [], []
    for status, age in [("failed", 10), ("cancelled", 10), ("failed", 1), ("succeeded", 10), ("running", 10)]:
        job_id = add_job(store, tmp_path, status, attempts=len(kept) + len(freed))
        store.update_job(job_id, finished_at=now() - age * 86400)
        run = store.runs_dir / job_id
        (run / "out" / "export").mkdir(parents=True)
        (run / "out" / "adapter.bin").write_bytes(b"x" * 1000)
        (freed if status in ("failed", "cancelled") and age > 7 else kept).append(run)
    old_export = kept[0] / "out" / "export" / "model-f16.gguf"
    new_export = kept[1] / "out" / "export" / "model-q8_0.gguf"
    for export, age in [(old_export, 10), (new_export, 1)]:
        export.write_bytes(b"g" * 500)
        stamp = time.time() - age * 86400
        import os

        os.utime(export, (stamp, stamp))
    assert serve_main(["serve", "gc", "--home", str(store.home), "--keep-failed-runs", "7d"]) == 0
    assert f"freed {2 * 1000 + 500} bytes in 3 paths" in capsys.readouterr().out
    assert not any(run.exists() for run in freed) and all(run.exists() for run in kept)
    assert not old_export.exists() and new_export.exists()
    assert collect_garbage(store, 7 * 86400) == []  # nothing left to free


def test_retention_runs_at_start(tmp_path):
    from fastapi.testclient import TestClient

    from tunesmith.serve.app import create_app
    from tunesmith.serve.settings import ServeSettings

    store = Store(tmp_path / "home")
    job_id = add_job(store, tmp_path, "failed")
    store.update_job(job_id, finished_at=now() - 3 * 3600)
    (store.runs_dir / job_id).mkdir()
    with TestClient(create_app(ServeSettings(home=store.home, keep_failed_runs=parse_duration("2h")))):
        assert not (store.runs_dir / job_id).exists()
