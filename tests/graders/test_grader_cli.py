"""`tunesmith grader validate|run` on the command line."""

import json

import pytest

from tunesmith.cli import main

GRADER = {
    "type": "string_check",
    "name": "exact",
    "operation": "ilike",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "pass_threshold": 1,
}


@pytest.fixture
def grader_file(tmp_path):
    path = tmp_path / "grader.json"
    path.write_text(json.dumps(GRADER))
    return str(path)


def test_run(grader_file, capsys):
    assert main(["grader", "run", grader_file, "--sample", "It is PARIS.", "--item", '{"answer": "Paris"}']) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"reward": 1.0, "passed": True, "sub_rewards": {}, "errors": [], "messages": []}


def test_run_reports_a_missing_field(capsys):
    assert main(["grader", "run", json.dumps(GRADER), "--sample", "x"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reward"] == 0.0 and report["errors"] == ["invalid_variable_error"]
    assert report["messages"] == ["{{item.answer}}: item has no field 'answer' (it has no fields)"]


def test_validate_with_data(grader_file, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    user = {"role": "user", "content": "Capital of France?"}
    data.write_text(
        json.dumps({"messages": [user], "answer": "Paris"}) + "\n" + json.dumps({"messages": [user]}) + "\n"
    )
    assert main(["grader", "validate", grader_file, "--data", str(data)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "grader 'exact' (string_check): ok",
        f"{data}: 1 prompts, 1 with problems",
        f"  {data}:2: answer: the grader reads this field: item has no field 'answer' (it has 'messages')",
    ]


@pytest.mark.parametrize(
    "grader, message",
    [
        ({**GRADER, "operation": "regex"}, "invalid grader: operation: Input should be"),
        ("{not json", "the grader: not valid JSON"),
    ],
)
def test_validate_refuses(grader, message, capsys):
    assert main(["grader", "validate", grader if isinstance(grader, str) else json.dumps(grader)]) == 2
    assert message in capsys.readouterr().err
