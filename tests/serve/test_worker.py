"""The job supervisor on its own (no HTTP): missed cancels, lost trainers, the run-folder lock."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from serve_helpers import FAKE_TRAINER, alive

from tunesmith.errors import TunesmithError
from tunesmith.runfolder import lock_holder, locked
from tunesmith.serve.jobs.supervisor import MAX_ATTEMPTS, STOP_GRACE_SECONDS, Worker
from tunesmith.serve.store import Store, now


def add_job(store: Store, tmp_path, status: str, attempts: int = 0) -> str:
    key = store.create_key("acme")
    org = store.org_for_key(key)
    data = tmp_path / f"train-{attempts}.jsonl"
    data.write_text("{}\n" * 20)  # the fake trainer counts lines
    store.add_file(f"file-{attempts}", org["id"], "train.jsonl", "fine-tune", data.stat().st_size, str(data))
    job_id = f"ftjob-{status}{attempts}"
    store.add_job(
        {
            "id": job_id,
            "org_id": org["id"],
            "model": "tiny-llama-test",
            "training_file": f"file-{attempts}",
            "seed": 1,
            "hyperparameters": {"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0},
            "status": status,
            "created_at": now(),
            "run_dir": str(store.runs_dir / job_id),
            "total_steps": 20,
            "attempts": attempts,
        }
    )
    return job_id


def wait(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s")


@pytest.fixture
def worker(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.2")
    store = Store(tmp_path / "home")
    workers = []

    def make() -> Worker:
        workers.append(Worker(store, [sys.executable, str(FAKE_TRAINER)], poll_seconds=0.1))
        workers[-1].start()
        return workers[-1]

    yield store, make
    for w in workers:
        w.stop()


def test_a_cancel_the_supervisor_never_heard_of_still_stops_the_trainer(worker, tmp_path):
    store, make = worker
    job_id = add_job(store, tmp_path, "queued")
    make()
    pid = wait(lambda: (job := store.job(None, job_id))["status"] == "running" and job["pid"], 30)
    # The API marked the job cancelled as its trainer started: the cancel reached no trainer.
    store.update_job(job_id, status="cancelled")
    wait(lambda: not alive(pid), STOP_GRACE_SECONDS + 5)


def test_jobs_whose_trainer_is_gone_are_resumed_or_failed(worker, tmp_path):
    store, make = worker
    lost = add_job(store, tmp_path, "running")
    worn = add_job(store, tmp_path, "running", attempts=MAX_ATTEMPTS)
    make()
    assert wait(lambda: store.job(None, lost)["status"] in ("succeeded", "failed"), 60) and (
        store.job(None, lost)["status"] == "succeeded"
    ), store.job(None, lost)["error"]
    failed = store.job(None, worn)
    assert failed["status"] == "failed" and failed["error"]["code"] == "training_interrupted"
    assert any("resuming the job" in e["message"] for e in store.list_events(lost, None, 100))


def test_a_run_folder_has_one_trainer(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from tunesmith.runfolder import locked\n"
            "with locked(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)",
            str(tmp_path / "run"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    assert lock_holder(tmp_path / "run") == holder.pid
    with pytest.raises(TunesmithError, match=f"in use by another trainer \\(process {holder.pid}\\)"):
        with locked(tmp_path / "run"):
            pass
    holder.kill()
    holder.wait()
    assert lock_holder(tmp_path / "run") is None
    with locked(tmp_path / "run"):
        assert lock_holder(tmp_path / "run") == os.getpid()


def test_a_slow_validation_holds_neither_starts_nor_cancels(worker, tmp_path, monkeypatch):
    """Validation (a whole file tokenised) runs beside the supervision loop, not inside it."""
    store, make = worker
    release = threading.Event()

    def slow_check(self, job, train, validation):
        release.wait(60)
        raise RuntimeError("tokenizer gone")

    monkeypatch.setattr(Worker, "check_files", slow_check)
    validating = add_job(store, tmp_path, "validating_files", attempts=1)
    queued = add_job(store, tmp_path, "queued")
    make()
    try:
        pid = wait(lambda: (job := store.job(None, queued))["status"] == "running" and job["pid"], 10)
        store.update_job(queued, status="cancelled")
        wait(lambda: not alive(pid), STOP_GRACE_SECONDS + 5)
        assert store.job(None, validating)["status"] == "validating_files"  # still being checked
    finally:
        release.set()
    failed = wait(lambda: (job := store.job(None, validating))["status"] == "failed" and job, 10)
    assert "could not validate the files: tokenizer gone" in failed["error"]["message"]
