"""DPO pairs whose input declares tools and whose answers call them (OpenAI's DPO format)."""

import json

import pytest

from tunesmith.chat.tools import ToolCall
from tunesmith.data.preference import read_pairs, tokenize_pair
from tunesmith.data.tokenize import IGNORE_INDEX

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TOOLS = [{"type": "function", "function": WEATHER}]
USER = {"role": "user", "content": "Weather in Paris?"}


def _answer(city: str, name: str = "get_weather") -> list:
    call = {"id": "c1", "type": "function", "function": {"name": name, "arguments": json.dumps({"city": city})}}
    return [{"role": "assistant", "content": None, "tool_calls": [call]}]


def _pair(**changes) -> dict:
    row = {
        "input": {"messages": [USER], "tools": TOOLS},
        "preferred_output": _answer("Paris"),
        "non_preferred_output": _answer("Rome"),
    }
    return {**row, **changes}


def _decoded_labels(tokenizer, side) -> str:
    return tokenizer.decode([t for t, label in zip(side.input_ids, side.labels, strict=True) if label != IGNORE_INDEX])


def test_a_tools_pair_renders_its_calls_as_the_answers(tmp_path, smol_tokenizer):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(_pair()) + "\n")
    loaded = read_pairs(path)
    assert loaded.errors == []
    (pair,) = loaded.examples
    assert (pair.chosen_calls, pair.rejected_calls) == (
        (ToolCall("get_weather", {"city": "Paris"}, "c1"),),
        (ToolCall("get_weather", {"city": "Rome"}, "c1"),),
    )
    tokenized = tokenize_pair(smol_tokenizer, pair, 512)
    for side, city in ((tokenized.chosen, "Paris"), (tokenized.rejected, "Rome")):
        call = f'<tool_call>{{"name": "get_weather", "arguments": {{"city": "{city}"}}}}</tool_call><|im_end|>'
        assert _decoded_labels(smol_tokenizer, side) == call
        assert '"name": "get_weather"' in smol_tokenizer.decode(side.input_ids[:80])  # tools in the prompt


@pytest.mark.parametrize(
    "row, field, reason",
    [
        (
            _pair(preferred_output=_answer("Paris", "get_time")),
            "preferred_output[0].tool_calls[0].function.name",
            "calls 'get_time', which is not a declared tool (declared: get_weather)",
        ),
        (
            _pair(non_preferred_output=_answer("Paris")),
            "non_preferred_output",
            "identical to preferred_output: the pair prefers nothing",
        ),
        (
            _pair(input={"messages": [USER], "tools": TOOLS * 2}),
            "input.tools[1].function.name",
            "duplicate tool name 'get_weather' (also tools[0].function)",
        ),
        (
            _pair(input={"messages": [USER, {"role": "tool", "tool_call_id": "c7", "content": "18C"}], "tools": TOOLS}),
            "input.messages[1].tool_call_id",
            "'c7' answers no earlier call of this conversation",
        ),
    ],
)
def test_a_bad_tools_pair_names_its_field(tmp_path, row, field, reason):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(_pair()) + "\n" + json.dumps(row) + "\n")
    loaded = read_pairs(path)
    assert [(e.line, e.field, e.reason) for e in loaded.errors] == [(2, field, reason)]
    assert len(loaded.examples) == 1
