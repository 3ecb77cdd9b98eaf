"""Tool-calling data: OpenAI's chat format with tools (and its legacy forms), ShareGPT, and their checks."""

import json
from pathlib import Path

import pytest

from tunesmith.chat.messages import Message
from tunesmith.chat.tools import Tool, ToolCall
from tunesmith.data.formats import LineError, read_examples
from tunesmith.data.validate import validate_dataset

GLAIVE = Path("/work/shared/data/tool_calling/glaive_toolcall_en_demo.json")
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TOOLS = [{"type": "function", "function": WEATHER}]
USER = {"role": "user", "content": "Weather in Paris?"}


def _call(name="get_weather", arguments='{"city": "Paris"}', id="c1"):
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _asks(*calls):
    return {"role": "assistant", "content": None, "tool_calls": list(calls)}


RESULT = {"role": "tool", "tool_call_id": "c1", "content": "18C"}
ANSWER = {"role": "assistant", "content": "18C in Paris."}
GOOD = {"messages": [USER, _asks(_call()), RESULT, ANSWER], "tools": TOOLS}
CALLED = ToolCall("get_weather", {"city": "Paris"}, "c1")
EXPECTED = (
    Message("user", "Weather in Paris?"),
    Message("assistant", "", tool_calls=(CALLED,)),
    Message("tool", "18C", tool_call_id="c1"),
    Message("assistant", "18C in Paris."),
)


def _sharegpt(*turns, tools=json.dumps([WEATHER])):
    return {"conversations": [{"from": f, "value": v} for f, v in turns], "tools": tools}


CALL_TURN = ("function_call", '{"name": "get_weather", "arguments": {"city": "Paris"}}')


@pytest.mark.parametrize(
    "record, messages",
    [
        (GOOD, EXPECTED),
        # the legacy forms: functions, function_call, a function result naming its function
        (
            {
                "messages": [
                    USER,
                    {
                        "role": "assistant",
                        "content": None,
                        "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {"role": "function", "name": "get_weather", "content": "18C"},
                    ANSWER,
                ],
                "functions": [WEATHER],
            },
            (
                EXPECTED[0],
                Message("assistant", "", tool_calls=(ToolCall("get_weather", {"city": "Paris"}),)),
                Message("tool", "18C", name="get_weather"),
                EXPECTED[3],
            ),
        ),
        (
            _sharegpt(("human", "Weather in Paris?"), CALL_TURN, ("observation", "18C"), ("gpt", "18C in Paris.")),
            (
                EXPECTED[0],
                Message("assistant", "", tool_calls=(ToolCall("get_weather", {"city": "Paris"}, "call_1_0"),)),
                Message("tool", "18C", tool_call_id="call_1_0"),
                EXPECTED[3],
            ),
        ),
    ],
)
def test_tool_conversations_read_into_messages_and_tools(tmp_path, record, messages):
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps(record) + "\n")
    loaded = read_examples(path)
    assert loaded.errors == []
    (example,) = loaded.examples
    assert example.messages == messages
    assert example.tools == (Tool("get_weather", "Weather in a city", WEATHER["parameters"]),)


def test_bfcl_dict_schemas_are_json_schema_objects(tmp_path):
    nested = {"type": "dict", "properties": {"point": {"type": "dict", "properties": {"x": {"type": "float"}}}}}
    tool = {"name": "plot", "description": "", "parameters": nested}
    record = {
        "messages": [USER, _asks(_call("plot", '{"point": {"x": "far"}}'))],
        "tools": [{"type": "function", "function": tool}],
    }
    path = tmp_path / "bfcl.jsonl"
    path.write_text(json.dumps(record) + "\n")
    (warning,) = read_examples(path).errors
    assert (warning.field, warning.severity) == ("messages[1].tool_calls[0].function.arguments", "warning")
    assert warning.reason == "do not match the parameters of plot: 'far' is not of type 'number' (at point/x)"


def _with(**changes):
    return {**GOOD, **changes}


@pytest.mark.parametrize(
    "record, field, reason, severity",
    [
        (
            _with(tools=TOOLS * 2),
            "tools[1].function.name",
            "duplicate tool name 'get_weather' (also tools[0].function)",
            "error",
        ),
        (
            _with(messages=[USER, _asks(_call("get_time")), RESULT, ANSWER]),
            "messages[1].tool_calls[0].function.name",
            "calls 'get_time', which is not a declared tool (declared: get_weather)",
            "error",
        ),
        (
            _with(messages=[USER, _asks(_call(arguments='{"city": Paris}')), RESULT, ANSWER]),
            "messages[1].tool_calls[0].function.arguments",
            "not valid JSON: Expecting value (column 10)",
            "error",
        ),
        (
            _with(messages=[USER, _asks(_call(arguments='["Paris"]')), RESULT, ANSWER]),
            "messages[1].tool_calls[0].function.arguments",
            "expected a JSON object, got array",
            "error",
        ),
        (
            _with(messages=[USER, _asks(_call(arguments='{"town": "Paris"}')), RESULT, ANSWER]),
            "messages[1].tool_calls[0].function.arguments",
            "do not match the parameters of get_weather: 'city' is a required property",
            "warning",
        ),
        (
            _with(messages=[USER, _asks(_call()), {**RESULT, "tool_call_id": "c9"}, ANSWER]),
            "messages[2].tool_call_id",
            "'c9' answers no earlier call of this conversation",
            "error",
        ),
        (
            _with(messages=[USER, _asks(_call()), {"role": "tool", "content": "18C"}, ANSWER]),
            "messages[2].tool_call_id",
            "missing key",
            "error",
        ),
        (
            _with(messages=[USER, {"role": "function", "name": "get_time", "content": "9am"}, ANSWER]),
            "messages[1].name",
            "'get_time' answers no earlier call of this conversation",
            "error",
        ),
        (
            _with(tools=[{"type": "function", "function": {**WEATHER, "parameters": {"type": "dictionary"}}}]),
            "tools[0].function.parameters",
            "not a valid JSON Schema: 'dictionary' is not valid under any of the given schemas (at type)",
            "error",
        ),
        (_with(functions=[WEATHER]), "functions", "give tools or the legacy functions, not both", "error"),
        (
            _with(messages=[USER, _asks(_call(), _call(id="c2")), RESULT, ANSWER], parallel_tool_calls=False),
            "messages[1].tool_calls",
            "2 calls in one turn, but parallel_tool_calls is false",
            "error",
        ),
        (
            _with(messages=[{**USER, "tool_calls": [_call()]}, ANSWER]),
            "messages[0].tool_calls",
            "only assistant messages call tools, not user",
            "error",
        ),
        (
            _with(messages=[USER, {"role": "assistant", "content": None}]),
            "messages[1].content",
            "expected a string, got null",
            "error",
        ),
        (
            _sharegpt(("human", "Weather?"), ("function_call", "{get_weather}")),
            "conversations[1].value",
            "not valid JSON: Expecting property name enclosed in double quotes (column 2)",
            "error",
        ),
        (
            _sharegpt(("human", "Weather?"), ("function_call", '{"name": "get_time", "arguments": {}}')),
            "conversations[1].value",
            "calls 'get_time', which is not a declared tool (declared: get_weather)",
            "error",
        ),
        (
            _sharegpt(("bot", "Weather?"), ("gpt", "Sunny.")),
            "conversations[0].from",
            "unknown speaker 'bot' (expected human, gpt, system, function_call, observation)",
            "error",
        ),
        (
            _sharegpt(("human", "Weather?"), ("gpt", "Sunny."), tools="[{"),
            "tools",
            "not valid JSON: Expecting property name enclosed in double quotes (column 3)",
            "error",
        ),
        (
            _sharegpt(("human", "Weather?"), ("gpt", "Sunny."), tools=json.dumps([{**WEATHER, "name": 3}])),
            "tools[0].name",
            "expected a non-empty string",
            "error",
        ),
        (
            _sharegpt(("human", "Weather?"), ("observation", "18C"), ("gpt", "Sunny.")),
            "conversations[1].value",
            "'(none)' answers no earlier call of this conversation",
            "error",
        ),
    ],
)
def test_each_tool_problem_names_file_line_and_field(tmp_path, record, field, reason, severity):
    path = tmp_path / "tools.jsonl"
    first = GOOD if "messages" in record else _sharegpt(("human", "Weather?"), ("gpt", "Sunny."))
    path.write_text(json.dumps(first) + "\n" + json.dumps(record) + "\n")
    loaded = read_examples(path)
    assert loaded.errors == [LineError(str(path), 2, field, reason, severity)]
    assert len(loaded.examples) == (2 if severity == "warning" else 1)


def test_the_glaive_file_validates_and_tokenises(smol_tokenizer):
    loaded = read_examples(GLAIVE)
    report, _, tokenized, _ = validate_dataset(loaded, smol_tokenizer, 12000)
    assert (loaded.format, report.n_examples, report.n_errors, len(tokenized)) == ("sharegpt", 300, 0, 300)
    # one conversation of the sample passes a list where its tool's schema says number (the
    # other warnings are the sample's 35 exact duplicates)
    others = [(i.line, i.field, i.severity) for i in report.issues if "duplicate" not in i.reason]
    assert others == [(260, "conversations[3].value", "warning")]
    assert report.stats.total_label_tokens > 0
