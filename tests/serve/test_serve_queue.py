"""The training queue between organisations (real server, fake trainer): fair turns, the job cap
under concurrent creates, per-job caps on steps and wall time."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from serve_helpers import wait_for
from test_serve_api import chat_rows, upload
from test_serve_encoder_jobs import PAIRS
from test_serve_encoder_jobs import upload as upload_pairs

from tunesmith.models import MINILM_L6
from tunesmith.serve.store import Store


def start_order(home) -> list[str]:
    """Job ids in the order their trainers first started."""
    store = Store(home)
    rows = store._all("SELECT job_id FROM events WHERE message LIKE 'Fine-tuning job started%' ORDER BY seq")
    return [row["job_id"] for row in rows]


def test_one_organisations_long_queue_delays_anothers_first_job_by_one_slot_at_most(fake_server):
    server = fake_server(env={"FAKE_STEP_SECONDS": "0.05"}, args=["--max-running", "1"])
    a, b = server.client(server.key("a")), server.client(server.key("b"))
    one_epoch = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 1}}}
    a_file = upload(a, chat_rows(30)).id  # 27 steps: about 1.5 s a job
    a_jobs = [
        a.fine_tuning.jobs.create(model="tiny-llama-test", training_file=a_file, method=one_epoch).id for _ in range(20)
    ]
    waiting = {j.id for j in a.fine_tuning.jobs.list(limit=100) if j.status in ("validating_files", "queued")}
    b_job = b.fine_tuning.jobs.create(
        model="tiny-llama-test", training_file=upload(b, chat_rows(8)).id, method=one_epoch
    )
    deadline = time.monotonic() + 60
    while b_job.id not in (order := start_order(server.home)) and time.monotonic() < deadline:
        time.sleep(0.1)
    overtook = [j for j in order[: order.index(b_job.id)] if j in waiting]
    assert len(waiting) >= 18 and len(overtook) <= 1, (len(waiting), overtook)
    assert set(a_jobs) >= set(order) - {b_job.id}


def test_concurrent_creates_cannot_pass_the_organisations_job_cap(fake_server):
    """Encoder creates check their file (an await) between the cap's count and the insert."""
    server = fake_server(args=["--max-jobs-per-org", "2", "--validation-per-org", "8", "--validation-threads", "4"])
    client = server.client(server.key("acme"))
    pairs = upload_pairs(client, PAIRS).id

    def create(_):
        try:
            return client.fine_tuning.jobs.create(model=MINILM_L6, training_file=pairs).id
        except openai.RateLimitError as error:
            return error.response.headers["retry-after"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(create, range(8)))
    created = [r for r in results if r.startswith("ftjob-")]
    assert len(created) == 2 and sorted(set(results) - set(created)) == ["60"], results
    assert len(client.fine_tuning.jobs.list(limit=100).data) == 2


CAPS = [  # (serve options, trainer step seconds, error code, words of the message)
    (["--max-job-steps", "10"], "0.01", "job_step_limit", ["would train 27 steps", "at most 10 steps"]),
    (["--max-job-minutes", "0.02"], "0.1", "job_time_limit", ["more than 1 s"]),
]


@pytest.mark.parametrize("options, step_seconds, code, words", CAPS, ids=["steps", "wall-time"])
def test_per_job_caps_fail_the_job_with_a_clear_error(fake_server, options, step_seconds, code, words):
    server = fake_server(env={"FAKE_STEP_SECONDS": step_seconds}, args=options)
    client = server.client(server.key("acme"))
    one_epoch = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 1}}}
    job = client.fine_tuning.jobs.create(
        model="tiny-llama-test", training_file=upload(client, chat_rows(30)).id, method=one_epoch
    )
    done = wait_for(client, job.id, timeout=60)
    assert done.status == "failed" and done.error.code == code, done.error
    assert all(word in done.error.message for word in words), done.error.message
