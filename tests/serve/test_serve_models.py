"""Fine-tuned models: ids unique per organisation, and no delete that breaks what trains from them."""

from __future__ import annotations

import openai
import pytest
from serve_helpers import wait_for
from test_serve_api import chat_rows, upload

from tunesmith.serve.store import Store


def _job(store: Store, org_id: str, job_id: str, model: str, status: str) -> None:
    store.add_job(
        {
            "id": job_id,
            "org_id": org_id,
            "model": model,
            "training_file": "file-x",
            "seed": 0,
            "hyperparameters": {},
            "status": status,
            "created_at": 0,
            "run_dir": str(store.runs_dir / job_id),
        }
    )


# (the child rows to add, then what deleting the parent answers: the dependants named, [] when deleted)
DEPENDANTS = [
    ([], []),
    ([("model", "ft:b:org-a::child")], ["ft:b:org-a::child"]),
    ([("job", "queued")], ["ftjob-child"]),
    ([("job", "running")], ["ftjob-child"]),
    ([("job", "validating_files")], ["ftjob-child"]),
    ([("job", "succeeded"), ("job", "failed")], []),
    ([("job", "queued"), ("model", "ft:b:org-a::child")], ["ft:b:org-a::child", "ftjob-child"]),
]


@pytest.mark.parametrize("children, named", DEPENDANTS)
def test_delete_refuses_a_model_others_train_from(tmp_path, children, named):
    store = Store(tmp_path)
    parent = "ft:b:org-a::parent"
    store.add_model(parent, "org-a", "ftjob-parent", "b", str(tmp_path / "runs/ftjob-parent/out/adapter"))
    for n, (kind, what) in enumerate(children):
        if kind == "model":
            merged = str(tmp_path / "runs/ftjob-parent/out/merged")
            store.add_model(what, "org-a", "ftjob-child", merged, str(tmp_path / "runs/ftjob-child/out/adapter"))
        else:
            _job(store, "org-a", f"ftjob-child{n or ''}", parent, what)
    # Another organisation's job naming the same id is not a dependant of this organisation's model.
    _job(store, "org-b", "ftjob-other", parent, "queued")
    assert store.delete_model("org-a", parent) == named
    assert (store.model("org-a", parent) is None) == (not named)


def test_a_model_id_taken_by_another_job_is_never_replaced(tmp_path):
    store = Store(tmp_path)
    store.add_model("ft:b:x::same", "org-a", "ftjob-a", "b", "/runs/a/out/adapter")
    store.add_model("ft:b:x::same", "org-a", "ftjob-a", "b", "/runs/a/out/adapter")  # the same job again: fine
    with pytest.raises(ValueError, match="already taken by another job"):
        store.add_model("ft:b:x::same", "org-b", "ftjob-b", "b", "/runs/b/out/adapter")
    assert store.model("org-a", "ft:b:x::same")["adapter_path"] == "/runs/a/out/adapter"
    assert store.model("org-b", "ft:b:x::same") is None


def test_organisations_whose_names_slug_alike_get_their_own_models(fake_server):
    server = fake_server()
    store = Store(server.home)
    jobs = {}
    for name in ("Acme Corp", "acme-corp"):  # both slug to "acme-corp"
        key = server.key(name)
        client = server.client(key)
        job = client.fine_tuning.jobs.create(
            model="tiny-llama-test", training_file=upload(client, chat_rows(4)).id, suffix="same"
        )
        jobs[name] = (client, store.org_for_key(key)["id"], wait_for(client, job.id))
    for client, org_id, job in jobs.values():
        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model == f"ft:tiny-llama-test:{org_id}:same:{job.id[-8:]}"
        assert [m.id for m in client.models.list() if m.id.startswith("ft:")] == [job.fine_tuned_model]

    # A fine-tune of the first organisation's model (registered as the worker registers one).
    client, org_id, parent = jobs["Acme Corp"]
    parent_row = store.model(org_id, parent.fine_tuned_model)
    run = parent_row["adapter_path"].rsplit("/", 1)[0]
    child = f"ft:tiny-llama-test:{org_id}::child123"
    store.add_model(child, org_id, "ftjob-child123", f"{run}/merged", f"{server.home}/runs/ftjob-child123/out/adapter")
    with pytest.raises(openai.ConflictError) as caught:
        client.models.delete(parent.fine_tuned_model)
    error = caught.value.response.json()["error"]
    assert error["code"] == "in_use" and error["param"] == "model"
    assert f"{child} is trained from it" in error["message"]
    assert client.models.retrieve(parent.fine_tuned_model).id == parent.fine_tuned_model
    assert client.models.delete(child).deleted and client.models.delete(parent.fine_tuned_model).deleted
    other_client, _, other = jobs["acme-corp"]
    assert other_client.models.retrieve(other.fine_tuned_model).id == other.fine_tuned_model
