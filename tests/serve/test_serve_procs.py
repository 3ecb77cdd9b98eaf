"""`tunesmith serve --procs-per-job N`: every job's trainer is started on N processes."""

import json
from pathlib import Path

from serve_helpers import wait_for
from test_serve_api import chat_rows, upload


def test_jobs_train_on_the_configured_number_of_processes(fake_server):
    server = fake_server(args=["--procs-per-job", "2"])
    client = server.client(server.key("acme"))
    job = client.fine_tuning.jobs.create(model="tiny-llama-test", training_file=upload(client, chat_rows(8)).id)
    assert wait_for(client, job.id).status == "succeeded"
    started = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if "started" in e.message]
    assert [(e.message, e.data) for e in started] == [("Fine-tuning job started on 2 processes", {"procs": 2})]
    (argv_file,) = Path(server.home).rglob("argv.json")
    assert json.loads(argv_file.read_text())[1:] == ["--overwrite", "--nproc-per-node=2"]
