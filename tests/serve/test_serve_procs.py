"""`tunesmith serve --procs-per-job N`: every job's trainer is started on N processes."""

import json
from pathlib import Path

from serve_helpers import wait_for
from test_serve_api import chat_rows, upload


def test_jobs_train_on_the_configured_number_of_processes(fake_server):
    server = fake_server(args=["--procs-per-job", "2"])
    client = server.client(server.key("acme"))
    job = client.fine_tuning.jobs.create(model="tiny-llama-test", training_file=upload(client, chat_rows(8)).id)
    assert job.procs == 2  # the job object says it, from creation on
    assert wait_for(client, job.id).status == "succeeded"
    assert client.fine_tuning.jobs.retrieve(job.id).procs == 2
    started = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if "started" in e.message]
    assert [(e.message, e.data) for e in started] == [("Fine-tuning job started on 2 processes", {"procs": 2})]
    (argv_file,) = Path(server.home).rglob("argv.json")
    assert json.loads(argv_file.read_text())[1:] == ["--overwrite", "--nproc-per-node=2"]


def test_a_database_from_before_the_procs_column_gains_it(tmp_path):
    """Jobs remember the processes they were created for; older databases get the column (1 process)."""
    import sqlite3

    from tunesmith.serve.store import Store

    store = Store(tmp_path)
    with sqlite3.connect(store.path) as db:
        db.execute("ALTER TABLE jobs DROP COLUMN procs")
    again = Store(tmp_path)
    with sqlite3.connect(again.path) as db:
        assert "procs" in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
