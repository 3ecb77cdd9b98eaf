import json

import pytest

from tunesmith.chat.messages import Message
from tunesmith.chat.render import (
    FALLBACK,
    TEMPLATE,
    read_rendering,
    render_prompt,
    rendering,
    save_rendering,
    template_inputs,
)
from tunesmith.chat.tools import Tool, ToolCall, parse_tool_calls, render_tool_calls

WEATHER = Tool("get_weather", "Weather in a city", {"type": "object", "properties": {"city": {"type": "string"}}})


@pytest.mark.parametrize(
    "content, calls",
    [
        ("", [ToolCall("get_weather", {"city": "Paris"})]),
        ("", [ToolCall("get_weather", {"city": "Paris"}), ToolCall("get_weather", {"city": "Zürich"})]),
        ("Let me check.", [ToolCall("search", {"query": "a </tool_call> inside", "n": 3, "deep": {"x": [1, 2.5]}})]),
        ("", [ToolCall("now", {})]),
    ],
)
def test_render_then_parse_gives_the_same_calls(content, calls):
    text = "\n".join(part for part in (content, render_tool_calls(calls)) if part)
    assert parse_tool_calls(text) == (content, calls)


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>{not json}</tool_call>",
        '<tool_call>{"arguments": {}}</tool_call>',  # no name
        '<tool_call>{"name": "f", "arguments": [1]}</tool_call>',  # arguments not an object
        '<tool_call>{"name": "f", "arguments": "{oops"}</tool_call>',
        '<tool_call>{"name": "f", "arguments": {}}',  # never closed (generation cut off)
        "plain answer, no calls",
        "",
    ],
)
def test_unreadable_output_stays_content(text):
    assert parse_tool_calls(text) == (text, [])


@pytest.mark.parametrize(
    "text, calls",
    [
        # Qwen-style templates put the JSON on its own line; OpenAI-style string arguments also read.
        ('<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>', [ToolCall("f", {"a": 1})]),
        ('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>', [ToolCall("f", {"a": 1})]),
        ('<tool_call>{"oops"}</tool_call>\n<tool_call>{"name": "g", "arguments": {}}</tool_call>', [ToolCall("g", {})]),
    ],
)
def test_parse_reads_what_it_can(text, calls):
    assert parse_tool_calls(text)[1] == calls


def test_fallback_prompt_holds_tools_calls_and_results(smol_tokenizer):
    assert rendering(smol_tokenizer) == FALLBACK
    messages = (
        Message("system", "Be brief."),
        Message("user", "Weather in Paris and Rome?"),
        Message("assistant", "", tool_calls=(ToolCall("get_weather", {"city": "Paris"}, "c1"),)),
        Message("tool", "18C", tool_call_id="c1"),
        Message("tool", "25C", tool_call_id="c2"),
    )
    text = render_prompt(smol_tokenizer, messages, (WEATHER,))
    system = json.dumps([WEATHER.function()])
    assert text == (
        f"<|im_start|>system\nYou can call these tools:\n{system}\n"
        'To call a tool, answer with one line per call: <tool_call>{"name": <tool name>, "arguments": <JSON object>}'
        "</tool_call>\nResults come back as <tool_response>...</tool_response>.\n\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>18C</tool_response>\n<tool_response>25C</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("mode", [FALLBACK, TEMPLATE])
def test_without_tools_a_chat_renders_as_before(mode):
    messages = (Message("user", "hi"), Message("assistant", "yo"))
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert template_inputs(messages, mode=mode) == (plain, None)


def test_template_rendering_passes_tools_and_calls(qwen_style_tokenizer):
    assert rendering(qwen_style_tokenizer) == TEMPLATE
    messages = (
        Message("user", "Weather?"),
        Message("assistant", "", tool_calls=(ToolCall("get_weather", {"city": "Paris"}, "c1"),)),
        Message("tool", "18C", tool_call_id="c1"),
    )
    chat, tools = template_inputs(messages, (WEATHER,), mode=TEMPLATE)
    assert tools == [WEATHER.openai()]
    assert chat[1]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    text = render_prompt(qwen_style_tokenizer, messages, (WEATHER,))
    assert '"name": "get_weather"' in text and "<tool_call>" in text and "18C" in text


@pytest.mark.parametrize(
    "fixture, record",
    [
        ("smol_tokenizer", {"tools": "fallback", "fallback_version": 1}),
        ("qwen_style_tokenizer", {"tools": "template", "fallback_version": None}),
    ],
)
def test_the_rendering_is_saved_with_a_run(fixture, record, request, tmp_path):
    assert read_rendering(tmp_path) is None
    save_rendering(tmp_path, request.getfixturevalue(fixture))
    assert read_rendering(tmp_path) == record
