import json
import shutil
from pathlib import Path

import pytest

from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.evaluate import variants
from tunesmith.evaluate.run import format_summary, run_evaluation
from tunesmith.evaluate.tool_eval import load_tool_items, read_output
from tunesmith.models import resolve_model_path

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}


def _item(question, answer, category):
    return {
        "messages": [{"role": "user", "content": question}],
        "tools": [WEATHER],
        "possible_answer": answer,
        "category": category,
    }


TEST = [
    _item("Weather in Paris?", [{"get_weather": {"city": ["Paris"], "days": [1, ""]}}], "simple"),
    _item("Weather in Oslo for 3 days?", [{"get_weather": {"city": ["Oslo"], "days": [3]}}], "simple"),
    _item(
        "Weather in Rome and Bern?",
        [{"get_weather": {"city": ["Rome"]}}, {"get_weather": {"city": ["Bern"]}}],
        "parallel",
    ),
    _item("Tell me a joke.", [], "irrelevance"),
]
# What a perfect model answers, in the fallback format (Bern first: parallel order is free).
RIGHT = [
    '<tool_call>{"name": "get_weather", "arguments": {"city": "paris"}}</tool_call>',
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo", "days": 3}}</tool_call>',
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Bern"}}</tool_call>\n'
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>',
    "I have no tool for jokes.",
]


def _train_line(question, city):
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
    }
    messages = [{"role": "user", "content": question}, {"role": "assistant", "tool_calls": [call]}]
    return {"messages": messages, "tools": [WEATHER]}


def _config(tmp_path, out_dir="no-run"):
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in TEST))
    train = [_train_line("Weather in Lima?", "Lima"), _train_line("Weather in Kyiv?", "Kyiv")]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in train))
    raw = {
        "model": "tiny-llama-test",
        "out_dir": str(tmp_path / out_dir),
        "data": {"train": str(tmp_path / "train.jsonl"), "test": str(tmp_path / "test.jsonl")},
        "eval": {"task": "tool_calls", "max_new_tokens": 6, "batch_size": 4, "bootstrap_resamples": 20},
    }
    return config_from_dict(raw)


@pytest.fixture
def tuned_run(tmp_path, tiny_model_name):
    run = tmp_path / "run"
    shutil.copytree(resolve_model_path(tiny_model_name), run / "merged")
    return run


def test_random_model_end_to_end(tmp_path, tuned_run):
    """The random tiny model calls nothing: right on the irrelevance item only."""
    result = run_evaluation(_config(tmp_path), str(tuned_run), str(tmp_path / "out"))
    assert list(result["variants"]) == ["zero_shot", "few_shot", "finetuned"]
    assert result["few_shot"]["mean_shots"] == 2
    for variant in result["variants"].values():
        scores = {name: m["value"] for name, m in variant["metrics"].items()}
        assert scores["exact_call"] == 25.0 and scores["no_call"] == 100.0
        assert scores["exact_call[irrelevance]"] == 100.0 and scores["exact_call[simple]"] == 0.0
    assert result["gain"]["exact_call"]["value"] == 0.0
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert saved["task"] == "tool_calls" and saved["items"] == 4 and saved["references"] == 4
    assert (tmp_path / "out" / "report.md").is_file()
    assert "exact_call" in format_summary(result)


def test_prompts_offer_the_tools_and_right_answers_score_100(tmp_path, monkeypatch, tuned_run):
    seen = []
    real = variants.generate_answers

    def answer(model, tokenizer, prompts, settings, max_new_tokens):
        seen.append([tokenizer.decode(p) for p in prompts])
        out = real(model, tokenizer, prompts, settings, 1)
        out.texts = list(RIGHT)
        return out

    monkeypatch.setattr(variants, "generate_answers", answer)
    result = run_evaluation(_config(tmp_path), str(tuned_run), str(tmp_path / "out"))
    zero, few, _ = seen
    assert all('"get_weather"' in p and "<tool_call>" in p for p in zero)
    assert all("Weather in Lima?" in p and "Weather in Kyiv?" in p for p in few)  # the demonstrations
    for variant in result["variants"].values():
        assert {name: m["value"] for name, m in variant["metrics"].items()} == {
            "exact_call": 100.0,
            "name": 100.0,
            "arguments": 100.0,
            "json_valid": 100.0,
            "no_call": 100.0,
            "exact_call[irrelevance]": 100.0,
            "exact_call[parallel]": 100.0,
            "exact_call[simple]": 100.0,
        }


@pytest.mark.parametrize(
    ("text", "calls", "attempted", "valid"),
    [
        ('<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>', (("f", {"x": 1}),), True, True),
        ('<tool_call>{"name": "f", "arguments": {"x": 1}</tool_call>', (), True, False),  # a brace short
        ("no call here", (), False, True),
    ],
)
def test_read_output(text, calls, attempted, valid):
    out = read_output(text)
    assert (out.calls, out.attempted, out.valid_json) == (calls, attempted, valid)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("not json", "test.jsonl:1: not valid JSON"),
        ({"messages": [{"role": "user", "content": "q"}], "tools": [WEATHER]}, "field 'possible_answer' is missing"),
        (
            {"messages": [{"role": "user", "content": "q"}], "tools": [WEATHER], "possible_answer": [{"nope": {}}]},
            "field 'possible_answer[0]' calls 'nope', which is not among the tools",
        ),
        (
            {
                "messages": [{"role": "user", "content": "q"}],
                "tools": [WEATHER],
                "possible_answer": [{"get_weather": {"city": "Paris"}}],
            },
            "field 'possible_answer[0].get_weather.city' must be a list",
        ),
        ({"messages": [], "tools": [WEATHER], "possible_answer": []}, "field 'messages' must be a non-empty list"),
        ({"messages": [{"role": "user", "content": "q"}], "tools": [{"x": 1}], "possible_answer": []}, "'tools[0]'"),
    ],
)
def test_bad_test_lines_name_line_and_field(tmp_path, row, message):
    path = tmp_path / "test.jsonl"
    path.write_text(row if isinstance(row, str) else json.dumps(row))
    with pytest.raises(TunesmithError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_tool_items(str(path))


def test_shipped_test_split_loads():
    items = load_tool_items(str(Path(__file__).resolve().parents[2] / "data/tool_calling/test.jsonl"))
    assert len(items) == 310
    assert {item.category for item in items} == {
        "simple_python",
        "multiple",
        "parallel",
        "parallel_multiple",
        "irrelevance",
    }
    assert sum(not item.possible_answer for item in items) == 60
