import json

import jsonschema
import pytest

from tunesmith.chat.schemas import as_json_schema
from tunesmith.chat.tools import Tool, parse_tool_calls
from tunesmith.constrained import (
    compile_grammar,
    json_schema_grammar,
    tool_call_grammar,
    tool_choice_grammar,
)
from tunesmith.errors import TunesmithError
from tunesmith.generation import Sampling, generate, stream
from tunesmith.models import load_model

# Bounded strings and numbers: a random model picks among allowed tokens without ever choosing
# to close a string, so the bound is what lets its answer end within the token budget.
WEATHER = Tool(
    "get_weather",
    "Weather in a city.",
    {
        "type": "dict",  # BFCL's name for object
        "properties": {
            "city": {"type": "string", "maxLength": 8},
            "days": {"type": "integer", "minimum": 1, "maximum": 14},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
)
ALARM = Tool(
    "set_alarm",
    "Set an alarm.",
    {
        "type": "object",
        "properties": {"hour": {"type": "integer", "minimum": 0, "maximum": 23}, "loud": {"type": "boolean"}},
        "required": ["hour", "loud"],
    },
)
TOOLS = (WEATHER, ALARM)
LIMIT = 128  # tokens: the random model spells much of a call one character at a time


@pytest.fixture(scope="module")
def tiny(tiny_model_name):
    loaded = load_model(tiny_model_name)
    loaded.model.eval()
    return loaded


def _prompts(tokenizer, n):
    return [tokenizer(f"Question {i}: what now?", add_special_tokens=False).input_ids for i in range(n)]


@pytest.mark.parametrize(
    ("name", "temperature", "allowed"),
    [
        ("get_weather", 0.0, {"get_weather"}),
        (None, 1.5, {"get_weather", "set_alarm"}),  # tool_choice: required
    ],
)
def test_random_model_calls_are_schema_valid(tiny, name, temperature, allowed):
    vocab = tiny.model.config.vocab_size
    grammar = compile_grammar(tiny.tokenizer, vocab, tool_call_grammar(TOOLS, name))
    prompts = _prompts(tiny.tokenizer, 2)
    out = generate(
        tiny.model,
        tiny.tokenizer,
        prompts,
        max_new_tokens=LIMIT,
        batch_size=2,
        temperature=temperature,
        seed=1,
        grammars=[grammar] * len(prompts),
    )
    schemas = {tool.name: as_json_schema(tool.parameters) for tool in TOOLS}
    for text in out.texts:
        content, calls = parse_tool_calls(text)
        assert content == "" and len(calls) == 1, text
        assert calls[0].name in allowed
        jsonschema.validate(calls[0].arguments, schemas[calls[0].name])
    assert all(n < LIMIT for n in out.new_tokens)  # each ended with the end-of-turn token


def test_free_and_constrained_rows_share_a_batch(tiny):
    vocab = tiny.model.config.vocab_size
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    grammar = compile_grammar(tiny.tokenizer, vocab, json_schema_grammar(schema))
    prompts = _prompts(tiny.tokenizer, 2)
    free = generate(tiny.model, tiny.tokenizer, prompts, max_new_tokens=8, batch_size=2)
    mixed = generate(tiny.model, tiny.tokenizer, prompts, max_new_tokens=8, batch_size=2, grammars=[None, grammar])
    assert mixed.texts[0] == free.texts[0]  # the free row is untouched
    assert json.loads(mixed.texts[1]) in ({"ok": True}, {"ok": False})


def test_stream_holds_to_the_grammar(tiny):
    grammar = compile_grammar(tiny.tokenizer, tiny.model.config.vocab_size, tool_call_grammar(TOOLS, "set_alarm"))
    pieces = list(stream(tiny.model, tiny.tokenizer, _prompts(tiny.tokenizer, 1)[0], Sampling(LIMIT), grammar=grammar))
    assert pieces[-1].finish_reason == "stop"
    _, calls = parse_tool_calls("".join(p.text for p in pieces))
    jsonschema.validate(calls[0].arguments, ALARM.parameters)


def test_unknown_named_function_is_refused():
    with pytest.raises(TunesmithError, match="'nope', which is not among the tools \\(get_weather, set_alarm\\)"):
        tool_call_grammar(TOOLS, "nope")


@pytest.mark.parametrize(
    ("choice", "allowed"), [("set_alarm", {"set_alarm"}), ("required", {"get_weather", "set_alarm"})]
)
def test_cli_generate_prints_calls_that_validate(tmp_path, tiny_model_name, capsys, choice, allowed):
    from tunesmith.cli import main

    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([tool.openai() for tool in TOOLS]))
    argv = ["generate", "--model", tiny_model_name, "--prompt", "Wake me at 7", "--tools", str(tools)]
    assert main([*argv, "--tool-choice", choice, "--max-new-tokens", str(LIMIT)]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    call = json.loads(line)
    assert call["type"] == "function" and call["function"]["name"] in allowed
    schema = as_json_schema({tool.name: tool.parameters for tool in TOOLS}[call["function"]["name"]])
    jsonschema.validate(json.loads(call["function"]["arguments"]), schema)


def test_cli_refuses_a_function_not_offered(tmp_path, tiny_model_name, capsys):
    from tunesmith.cli import main

    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps({"tools": [WEATHER.openai()]}))
    argv = ["generate", "--model", tiny_model_name, "--prompt", "hi", "--tools", str(tools), "--tool-choice", "nope"]
    assert main(argv) != 0
    assert "'nope', which is not among the tools (get_weather)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("choice", "constrained"),
    [
        ("auto", False),
        ("none", False),
        (None, False),
        ("required", True),
        ("set_alarm", True),
        ({"type": "function", "function": {"name": "set_alarm"}}, True),
    ],
)
def test_tool_choice_grammar(choice, constrained):
    assert (tool_choice_grammar(TOOLS, choice) is not None) is constrained


def test_tool_choice_of_the_wrong_shape_is_refused():
    with pytest.raises(TunesmithError, match='tool_choice must be "none", "auto", "required" or'):
        tool_choice_grammar(TOOLS, {"type": "function", "function": {}})
