"""The server SIGKILLed at random points of its jobs' lives: every job still ends, no trainer is left."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

from serve_helpers import alive, wait_for
from test_serve_api import chat_rows, upload

from tunesmith.serve.store import TERMINAL

KILLS = 10


def processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return [pid for pid in found if alive(pid)]


def test_sigkill_at_random_points_leaves_every_job_finished(fake_server, tmp_path):
    rng = random.Random(12)
    home = tmp_path / "home"
    args, env = ["--train-override", "train.save_every=3"], {"FAKE_STEP_SECONDS": "0.1"}
    server = fake_server(env=env, home=home, args=args)
    key = server.key("acme")
    client = server.client(key)
    train = upload(client, chat_rows(12))
    jobs = []
    for kill in range(KILLS):
        job = client.fine_tuning.jobs.create(
            model="tiny-llama-test", training_file=train.id, hyperparameters={"n_epochs": 1, "batch_size": 1}
        )
        jobs.append(job.id)
        if kill % 4 == 3:
            client.fine_tuning.jobs.cancel(rng.choice(jobs))
        time.sleep(rng.uniform(0.0, 2.5))  # validating, queued, running, checkpointing or finishing
        server.kill(signal.SIGKILL)
        server = fake_server(env=env, home=home, args=args)
        client = server.client(key)
    finished = [wait_for(client, job_id, timeout=120) for job_id in jobs]
    for job in finished:
        assert job.status in TERMINAL
        assert job.status != "failed" or job.error.message, job
    print({status: sum(j.status == status for j in finished) for status in TERMINAL})
    server.kill(signal.SIGTERM)
    assert processes_mentioning(str(home)) == []  # no trainer outlived the servers
