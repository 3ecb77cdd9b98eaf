"""Labels of tool conversations: the assistant's calls (and text) and the token closing its turn;
the tools' schemas and the tools' results carry none."""

import pytest

from tunesmith.chat.messages import Message
from tunesmith.chat.tools import Tool, ToolCall
from tunesmith.data.formats import Example
from tunesmith.data.tokenize import IGNORE_INDEX, tokenize_example

WEATHER = Tool("get_weather", "Weather in a city", {"type": "object", "properties": {"city": {"type": "string"}}})
PARIS, ROME = ToolCall("get_weather", {"city": "Paris"}, "c1"), ToolCall("get_weather", {"city": "Rome"}, "c2")
PARIS_LINE = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
ROME_LINE = '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'
QWEN_PARIS = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
QWEN_ROME = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'


def _labelled_runs(tokenizer, tokenized) -> list[str]:
    runs, run = [], []
    for token, label in zip(tokenized.input_ids, tokenized.labels, strict=True):
        if label != IGNORE_INDEX:
            run.append(token)
        elif run:
            runs.append(tokenizer.decode(run))
            run = []
    return runs + ([tokenizer.decode(run)] if run else [])


TURNS = (
    Message("user", "Weather in Paris and Rome?"),
    Message("assistant", "", tool_calls=(PARIS, ROME)),
    Message("tool", "18C", tool_call_id="c1"),
    Message("tool", "25C", tool_call_id="c2"),
    Message("assistant", "Paris 18C, Rome 25C."),
)


@pytest.mark.parametrize(
    "fixture, messages, runs",
    [
        ("smol_tokenizer", TURNS, [f"{PARIS_LINE}\n{ROME_LINE}<|im_end|>", "Paris 18C, Rome 25C.<|im_end|>"]),
        (
            "smol_tokenizer",
            (TURNS[0], Message("assistant", "Let me look.", tool_calls=(PARIS,)), TURNS[2]),
            [f"Let me look.\n{PARIS_LINE}<|im_end|>"],
        ),
        (  # an earlier call with weight 0 is context only
            "smol_tokenizer",
            (TURNS[0], Message("assistant", "", 0, (PARIS, ROME)), *TURNS[2:]),
            ["Paris 18C, Rome 25C.<|im_end|>"],
        ),
        ("qwen_style_tokenizer", TURNS, [f"{QWEN_PARIS}{QWEN_ROME}<|im_end|>", "Paris 18C, Rome 25C.<|im_end|>"]),
    ],
)
def test_labels_cover_exactly_the_calls_and_closing_token(fixture, messages, runs, request):
    tokenizer = request.getfixturevalue(fixture)
    tokenized = tokenize_example(tokenizer, Example(1, messages=messages, tools=(WEATHER,)), 4096)
    assert _labelled_runs(tokenizer, tokenized) == runs
    assert "get_weather" in tokenizer.decode(tokenized.input_ids[:60])  # the schema is there, unlabelled
