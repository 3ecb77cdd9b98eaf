"""The grader routes through the official openai SDK against a real server."""

import httpx
import openai
import pytest

PYTHON = {
    "type": "python",
    "name": "slots",
    "source": "def grade(sample, item):\n"
    "    text = sample['output_text'].lower()\n"
    "    return sum(s in text for s in item['slots']) / len(item['slots'])\n",
}
CHECK = {
    "type": "string_check",
    "name": "exact",
    "operation": "eq",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from serve_helpers import Server

    home = tmp_path_factory.mktemp("home")
    server = Server(home, [], {}).start()
    yield server.client(server.key("org-a")), server
    server.kill()


@pytest.mark.parametrize(
    "grader, sample, item, reward, sub_rewards",
    [
        (CHECK, "Paris", {"answer": "Paris"}, 1.0, {}),
        (PYTHON, "The Eagle is a cheap pub.", {"slots": ["eagle", "cheap", "riverside"]}, 2 / 3, {}),
        (
            {
                "type": "multi",
                "name": "m",
                "graders": {"slots": PYTHON, "exact": CHECK},
                "calculate_output": "0.5 * slots + 0.5 * exact",
            },
            "the eagle, cheap",
            {"slots": ["eagle", "cheap"], "answer": "x"},
            0.5,
            {"slots": 1.0, "exact": 0.0},
        ),
        (
            {
                "type": "text_similarity",
                "name": "sim",
                "input": "{{sample.output_text}}",
                "reference": "a b c d",
                "evaluation_metric": "rouge_1",
            },
            "a b",
            {},
            2 / 3,
            {},
        ),
    ],
)
def test_run(client, grader, sample, item, reward, sub_rewards):
    sdk, _ = client
    result = sdk.fine_tuning.alpha.graders.run(grader=grader, model_sample=sample, item=item)
    assert result.reward == pytest.approx(reward)
    assert result.sub_rewards == sub_rewards
    assert result.metadata.name == grader["name"] and result.metadata.type == grader["type"]
    assert not result.metadata.errors.python_grader_runtime_error and not result.metadata.errors.invalid_variable_error


def test_run_reports_grader_failures(client):
    sdk, _ = client
    crash = {**PYTHON, "source": "import socket\ndef grade(sample, item):\n    socket.socket()\n    return 1"}
    result = sdk.fine_tuning.alpha.graders.run(grader=crash, model_sample="x", item={})
    assert result.reward == 0.0 and result.metadata.errors.python_grader_runtime_error
    assert "socket" in result.metadata.errors.python_grader_runtime_error_details
    missing = sdk.fine_tuning.alpha.graders.run(grader=CHECK, model_sample="x", item={})
    assert missing.reward == 0.0 and missing.metadata.errors.invalid_variable_error


def test_validate(client):
    sdk, _ = client
    assert sdk.fine_tuning.alpha.graders.validate(grader=CHECK).grader.name == "exact"


@pytest.mark.parametrize(
    "grader, param, message",
    [
        ({**CHECK, "operation": "contains"}, "grader.operation", "operation: Input should be"),
        ({**PYTHON, "source": "def score(s, i): return 1"}, "grader.source", "must define a top-level function grade"),
        (
            {"type": "multi", "name": "m", "graders": {"a": CHECK}, "calculate_output": "__import__('os')"},
            "grader.calculate_output",
            "only these functions may be called",
        ),
        (
            {"type": "score_model", "name": "j", "model": "/etc", "input": [{"role": "user", "content": "x"}]},
            "grader.model",
            "'/etc' is not a model this server grades with",
        ),
        ({"type": "label_model", "name": "l"}, "grader.type", "'label_model' is not supported"),
    ],
)
def test_validate_refuses_bad_graders(client, grader, param, message):
    sdk, _ = client
    with pytest.raises(openai.BadRequestError) as error:
        sdk.fine_tuning.alpha.graders.validate(grader=grader)
    body = error.value.body
    assert body["param"] == param and message in body["message"] and body["code"] == "invalid_grader"
    with pytest.raises(openai.BadRequestError):
        sdk.fine_tuning.alpha.graders.run(grader=grader, model_sample="x", item={})


def test_needs_an_api_key(client):
    _, server = client
    response = httpx.post(server.url + "/fine_tuning/alpha/graders/validate", json={"grader": CHECK})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
