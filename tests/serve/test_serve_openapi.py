"""The published OpenAPI document is the contract: bodies and errors described, 405 with Allow."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tunesmith.serve.app import create_app
from tunesmith.serve.settings import ServeSettings
from tunesmith.serve.store import Store


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    key = Store(home).create_key("acme")
    with TestClient(create_app(ServeSettings(home=home)), headers={"Authorization": f"Bearer {key}"}) as client:
        yield client


# (method, path, the Allow header: every method of that URL)
WRONG_METHODS = [
    ("PUT", "/v1/files", "GET, POST"),
    ("PATCH", "/v1/files/file-x", "DELETE, GET"),
    ("GET", "/v1/fine_tuning/jobs/ftjob-x/cancel", "POST"),
    ("DELETE", "/v1/models", "GET"),
    ("PUT", "/v1/models/ft:a:b::c", "DELETE, GET"),
    ("OPTIONS", "/v1/models/ft:a:b::c/content", "GET"),
    ("GET", "/v1/chat/completions", "POST"),
]


@pytest.mark.parametrize("method, path, allow", WRONG_METHODS)
def test_405_names_the_allowed_methods(http, method, path, allow):
    response = http.request(method, path)
    assert response.status_code == 405 and response.headers["Allow"] == allow
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_every_operation_documents_its_errors_and_bodies(http):
    schema = http.get("/openapi.json").json()
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    operations = {(m.upper(), p): op for p, item in schema["paths"].items() for m, op in item.items()}
    for (method, path), operation in operations.items():
        responses = operation["responses"]
        assert "422" not in responses, (method, path)
        for status in ("400", "401", "404", "409", "413", "429", "507"):
            assert responses[status]["content"]["application/json"]["schema"] == error, (method, path, status)
    bodies = {
        ("POST", "/v1/files"): ("multipart/form-data", "FileUpload"),
        ("POST", "/v1/fine_tuning/jobs"): ("application/json", "JobRequest"),
        ("POST", "/v1/embeddings"): ("application/json", "EmbeddingRequest"),
        ("POST", "/v1/chat/completions"): ("application/json", "ChatRequest"),
        ("POST", "/v1/completions"): ("application/json", "CompletionRequest"),
    }
    for where, (kind, model) in bodies.items():
        body = operations[where]["requestBody"]
        assert body["required"] and body["content"][kind]["schema"] == {"$ref": f"#/components/schemas/{model}"}
    components = schema["components"]["schemas"]
    upload = components["FileUpload"]
    assert (
        upload["properties"]["file"]["format"] == "binary" and upload["properties"]["purpose"]["const"] == "fine-tune"
    )
    assert {"model", "training_file", "hyperparameters", "method"} <= set(components["JobRequest"]["properties"])
    assert set(components["ErrorResponse"]["properties"]) == {"error"}
    assert "HTTPValidationError" not in components


def test_the_documented_outtypes_are_the_exporters():
    from typing import get_args

    from tunesmith.export.gguf import OUTTYPES
    from tunesmith.serve.routes.models import OutType

    assert list(get_args(OutType)) == list(OUTTYPES)


# (max_tokens as sent, what the request holds: a number, or None when it is refused)
INTEGERS = [(7, 7), (7.0, 7), (7.5, None), ("7", None), (True, None), (0, None), (1e300, None)]


@pytest.mark.parametrize("sent, held", INTEGERS)
def test_integers_are_json_integers_however_spelled(sent, held):
    from pydantic import ValidationError

    from tunesmith.serve.schemas import ChatRequest

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": sent}
    if held is None:
        with pytest.raises(ValidationError):
            ChatRequest.model_validate(body)
    else:
        assert ChatRequest.model_validate(body).max_tokens == held
