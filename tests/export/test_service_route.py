"""GET /v1/models/{id}/content?format=gguf streams an organisation's fine-tune as GGUF."""

import shutil

import pytest
from fastapi.testclient import TestClient

from tunesmith.serve.app import create_app
from tunesmith.serve.settings import ServeSettings

MODEL = "ft:tiny-llama-test:acme::abc123"


@pytest.fixture
def service(tiny_run, tmp_path):
    # Without the `with` block the app starts no worker: only the routes are exercised.
    app = create_app(ServeSettings(home=tmp_path / "home"))
    store = app.state.store
    acme, other = store.create_key("acme"), store.create_key("other")
    run = tmp_path / "jobs/ftjob-1/out"
    for part in ("merged", "adapter"):
        shutil.copytree(tiny_run / part, run / part)
    store.add_model(MODEL, store.org_for_key(acme)["id"], "ftjob-1", "tiny-llama-test", str(run / "adapter"))
    client = TestClient(app)
    return client, {"Authorization": f"Bearer {acme}"}, {"Authorization": f"Bearer {other}"}, run


def test_content_streams_the_gguf_of_the_organisations_model(service):
    client, acme, other, run = service
    response = client.get(f"/v1/models/{MODEL}/content", params={"format": "gguf", "outtype": "q8_0"}, headers=acme)
    assert response.status_code == 200
    written = run / "export/model-q8_0.gguf"
    assert response.content[:4] == b"GGUF" and response.content == written.read_bytes()
    assert 'filename="ft_tiny-llama-test_acme__abc123-q8_0.gguf"' in response.headers["content-disposition"]
    assert client.get(f"/v1/models/{MODEL}", headers=acme).json()["id"] == MODEL  # the model route still answers
    hidden = client.get(f"/v1/models/{MODEL}/content", headers=other)
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "model_not_found"


# query, status, error parameter
BAD_QUERIES = [({"format": "safetensors"}, 400, "format"), ({"outtype": "q4_k"}, 400, "outtype")]


@pytest.mark.parametrize(("query", "status", "param"), BAD_QUERIES)
def test_bad_queries_are_400_naming_the_parameter(service, query, status, param):
    client, acme, _, _ = service
    response = client.get(f"/v1/models/{MODEL}/content", params=query, headers=acme)
    assert response.status_code == status and response.json()["error"]["param"] == param
