"""OpenAI's reinforcement JSONL: prompts ending in a user turn plus the item fields the grader reads."""

import json

import pytest

from tunesmith.errors import TunesmithError
from tunesmith.graders import parse_grader
from tunesmith.graders.data import check, item_fields, read_graded

CHECK = parse_grader(
    {
        "type": "string_check",
        "name": "c",
        "operation": "eq",
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference.answer}}",
    }
)
CODE = parse_grader(
    {
        "type": "python",
        "name": "p",
        "source": (
            "def grade(sample, it):\n"
            "    slots = it['mr']['slots']\n"
            "    bonus = it.get('bonus', 0)\n"
            "    return sum(s in sample['output_text'] for s in slots) / len(slots) + bonus + len(it['name'])\n"
        ),
    }
)
MULTI = parse_grader(
    {
        "type": "multi",
        "name": "m",
        "calculate_output": "c + p",
        "graders": {"c": CHECK.model_dump(exclude_none=True), "p": CODE.model_dump(exclude_none=True)},
    }
)
USER = {"role": "user", "content": "Capital of France?"}


def write(tmp_path, records) -> str:
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return str(path)


@pytest.mark.parametrize(
    "grader, fields",
    [
        (CHECK, [("reference", "answer")]),
        (CODE, [("mr", "slots"), ("name",)]),  # subscripts of grade's second parameter; .get is optional
        (MULTI, [("reference", "answer"), ("mr", "slots"), ("name",)]),
        (
            parse_grader(
                {
                    "type": "python",
                    "name": "p",
                    "source": (
                        "def grade(sample, item):\n"
                        "    if 'hint' not in item:\n"
                        "        return 0\n"
                        "    try:\n"
                        "        extra = item['extra']['n']\n"
                        "    except KeyError:\n"
                        "        extra = 0\n"
                        "    return len(item['hint']) + extra + item['must']['x']\n"
                    ),
                }
            ),
            [("must", "x")],
        ),
    ],
)
def test_item_fields(grader, fields):
    assert item_fields(grader) == fields


def test_reads_prompts_and_items(tmp_path):
    record = {
        "messages": [{"role": "developer", "content": "Answer briefly."}, USER],
        "reference": {"answer": "Paris"},
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "response_format": {"type": "json_object"},
    }
    data = read_graded(write(tmp_path, [record]), CHECK)
    assert data.format == "reinforcement" and data.errors == []
    prompt = data.examples[0]
    assert [m.role for m in prompt.messages] == ["system", "user"]
    assert prompt.item["reference"] == {"answer": "Paris"}
    assert prompt.tools[0].name == "f" and prompt.response_format == {"type": "json_object"}


@pytest.mark.parametrize(
    "record, grader, error",
    [
        ({"messages": [USER], "reference": {"answer": "x"}}, CHECK, None),
        ({"messages": [USER]}, CHECK, "reference.answer: the grader reads this field: item has no field 'reference'"),
        (
            {"messages": [USER], "reference": {}},
            CHECK,
            "reference.answer: the grader reads this field: item.reference has no field 'answer' (it has no fields)",
        ),
        (
            {"messages": [USER], "mr": {"slots": []}},
            CODE,
            "name: the grader reads this field: item has no field 'name'",
        ),
        (
            {"messages": [USER, {"role": "assistant", "content": "Paris"}]},
            None,
            "messages[1].role: the prompt must end with a user message",
        ),
        ({"messages": []}, None, "messages: expected a non-empty array of messages, got array"),
        ({"messages": [{"role": "bot", "content": "x"}]}, None, "messages[0].role: unknown role 'bot'"),
        ({"prompt": "x"}, None, "messages: missing key"),
        ({"messages": [USER], "tools": {"a": 1}}, None, "tools: expected an array, got object"),
        (
            {"messages": [USER], "tools": [{"type": "function", "function": {}}]},
            None,
            "tools[0].function.name: missing",
        ),
        (
            {"messages": [USER], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]},
            None,
            "tools[0].function.parameters: not a valid JSON Schema",
        ),
        ({"messages": [USER], "parallel_tool_calls": "yes"}, None, "parallel_tool_calls: expected true or false"),
        ({"messages": [USER], "response_format": "json"}, None, "response_format: expected an object, got string"),
        (
            {"messages": [USER], "response_format": {"type": "yaml"}},
            None,
            "response_format.type: expected text, json_object or json_schema, got 'yaml'",
        ),
        (
            {"messages": [USER], "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 3}}}},
            None,
            "response_format.json_schema.schema: not a valid JSON Schema",
        ),
        ({"messages": [USER], "response_format": {"type": "json_object"}}, None, None),
        ("{not json", None, "invalid JSON"),
        ("[1]", None, "expected a JSON object, got array"),
    ],
)
def test_line_errors(tmp_path, record, grader, error):
    data = read_graded(
        write(tmp_path, [{"messages": [USER], "reference": {"answer": "y"}, "mr": {"slots": []}, "name": "n"}, record]),
        grader,
    )
    if error is None:
        assert data.errors == [] and len(data.examples) == 2
        return
    assert len(data.examples) == 1 and len(data.errors) == 1
    assert str(data.errors[0]).startswith(f"{data.path}:2: {error}")


def test_many_bad_lines_are_counted_not_listed(tmp_path):
    path = write(tmp_path, [{"messages": [USER]}] * 120)
    data, listed, counts = check(path, CHECK)
    assert len(data.errors) == 120 and len(listed) == 50
    assert listed[0].line == 1 and listed[-1].line == 50
    assert counts == {"error: the grader reads this field": 70}


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(TunesmithError, match="no examples"):
        read_graded(path)
