"""Tool calling and structured output through /v1/chat/completions with the official SDK, on the
tiny random model: constrained decoding makes its answers valid however random its weights."""

from __future__ import annotations

import io
import json
import sys

import httpx
import jsonschema
import pytest
from serve_helpers import FAKE_TRAINER, Server, wait_for

from tunesmith.serve.tool_calls import CallSplitter, rendering_mode

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER},
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"zone": {"type": "integer"}}, "required": ["zone"]},
        },
    },
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}


@pytest.fixture(scope="module")
def server(tiny_model_name, tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("home"), ["--trainer-command", f"{sys.executable} {FAKE_TRAINER}"], {})
    server.home.mkdir(parents=True, exist_ok=True)
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def client(server):
    return server.client(server.key("acme"))


def streamed_calls(stream) -> tuple[str, list[dict], str]:
    """(content, calls, finish_reason) accumulated from the chunks as OpenAI's clients do."""
    content, calls, finish = "", {}, None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for delta in choice.delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = delta.id or call["id"]
            call["name"] += (delta.function.name or "") if delta.function else ""
            call["arguments"] += (delta.function.arguments or "") if delta.function else ""
        finish = choice.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize(
    ("tool_choice", "names"),
    [
        ({"type": "function", "function": {"name": "get_weather"}}, {"get_weather"}),
        ({"type": "function", "function": {"name": "get_time"}}, {"get_time"}),
        ("required", {"get_weather", "get_time"}),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_forced_tool_choice_returns_valid_tool_calls(client, tiny_model_name, tool_choice, names, stream):
    kwargs = dict(model=tiny_model_name, messages=ASK, tools=TOOLS, tool_choice=tool_choice, max_tokens=60, seed=1)
    if stream:
        content, calls, finish = streamed_calls(client.chat.completions.create(stream=True, **kwargs))
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        content, finish = choice.message.content, choice.finish_reason
        calls = [
            {"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in choice.message.tool_calls
        ]
    assert finish == "tool_calls"
    assert not content  # only the call
    assert len(calls) == 1 and calls[0]["name"] in names and calls[0]["id"].startswith("call_")
    jsonschema.validate(json.loads(calls[0]["arguments"]), SCHEMAS[calls[0]["name"]])


def test_response_format_json_schema_gives_valid_json(client, tiny_model_name):
    response_format = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER, "strict": True}}
    choice = client.chat.completions.create(
        model=tiny_model_name, messages=ASK, response_format=response_format, max_tokens=60, seed=2
    ).choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), WEATHER)


def test_response_format_json_object_starts_an_object(client, tiny_model_name):
    # Any object: a random model may nest past max_tokens, but never writes anything else.
    choice = client.chat.completions.create(
        model=tiny_model_name, messages=ASK, response_format={"type": "json_object"}, max_tokens=8, seed=2
    ).choices[0]
    assert choice.message.content.startswith("{")


def test_a_conversation_with_a_tool_result_renders(client, tiny_model_name):
    messages = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees"},
    ]
    reply = client.chat.completions.create(model=tiny_model_name, messages=messages, tools=TOOLS, max_tokens=4)
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_tool_choice_none_offers_no_tools(client, tiny_model_name):
    reply = client.chat.completions.create(
        model=tiny_model_name, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=4, seed=3
    )
    assert reply.choices[0].message.tool_calls is None


@pytest.mark.parametrize(
    ("change", "param", "words"),
    [
        ({"tools": TOOLS + TOOLS[:1]}, "tools[2].function.name", "get_weather"),
        (
            {"messages": [*ASK, {"role": "tool", "tool_call_id": "call_9", "content": "21"}], "tools": TOOLS},
            "messages[1]",
            "call_9",
        ),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": TOOLS}, "tool_choice", "nope"),
        ({"tool_choice": "required"}, "tool_choice", "no tools"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
            "response_format.json_schema.schema",
            "JSON Schema",
        ),
    ],
)
def test_bad_tool_requests_are_400s_naming_the_field(server, tiny_model_name, change, param, words):
    body = {"model": tiny_model_name, "messages": ASK, "max_tokens": 2, **change}
    response = httpx.post(
        f"{server.url}/chat/completions", json=body, headers={"Authorization": f"Bearer {server.key('acme')}"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith(param) and words in error["message"], error


def tool_rows(n: int) -> list[dict]:
    """OpenAI-format tool-calling lines: a question, the call, its result, the answer."""
    rows = []
    for i in range(n):
        arguments = json.dumps({"city": f"c{i}", "unit": "c"})
        call = {"id": f"call_{i}", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
        rows.append(
            {
                "tools": TOOLS,
                "messages": [
                    {"role": "user", "content": f"Weather in c{i}?"},
                    {"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": f"call_{i}", "content": f"{i} degrees"},
                    {"role": "assistant", "content": f"It is {i} degrees."},
                ],
            }
        )
    return rows


def test_a_tool_calling_fine_tune_answers_with_tool_calls(make_server, tiny_model_name):
    server = make_server()  # the real trainer
    client = server.client(server.key("acme"))
    data = "".join(json.dumps(row) + "\n" for row in tool_rows(8)).encode()
    train = client.files.create(file=("tools.jsonl", io.BytesIO(data)), purpose="fine-tune")
    hyper = {"n_epochs": 1, "batch_size": 4}
    job = client.fine_tuning.jobs.create(
        model=tiny_model_name,
        training_file=train.id,
        method={"type": "supervised", "supervised": {"hyperparameters": hyper}},
    )
    job = wait_for(client, job.id, timeout=150)
    assert job.status == "succeeded", job.error
    kwargs = dict(
        model=job.fine_tuned_model,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=60,
        temperature=0,
    )
    choice = client.chat.completions.create(**kwargs).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls[0].function.name == "get_weather"
    whole = json.loads(choice.message.tool_calls[0].function.arguments)
    jsonschema.validate(whole, WEATHER)
    _, calls, finish = streamed_calls(client.chat.completions.create(stream=True, **kwargs))
    assert finish == "tool_calls" and json.loads(calls[0]["arguments"]) == whole  # greedy: the same call


@pytest.mark.parametrize(
    ("pieces", "sent", "content", "names"),
    [
        (["Hel", "lo <tool", "_call>", '{"name": "f", "arguments": {}}', "</tool_call>"], "Hello ", "", ["f"]),
        (["a <to", "o b"], "a <too b", "", []),  # a false start of the opener is sent after all
        (["<tool_call>{bad", "</tool_call>"], "", "<tool_call>{bad</tool_call>", []),  # unreadable: content
    ],
)
def test_stream_splitter_holds_calls_back_and_reads_them_at_the_end(pieces, sent, content, names):
    splitter = CallSplitter(active=True)
    assert "".join(splitter.feed(p) for p in pieces) == sent
    left, calls = splitter.finish()
    assert left == content and [c.name for c in calls] == names


@pytest.mark.parametrize(
    ("saved_in", "asked", "mode"),
    [
        ("run", "run/adapter", "template"),  # a fine-tune's adapter: its run's record
        ("run", "run/checkpoints/step-4", "template"),  # a checkpoint of the run
        ("run/merged", "run/merged", "fallback"),  # a merged fine-tune is its own base
        (None, "run/adapter", None),  # a run from before the record: the tokenizer decides
    ],
)
def test_a_fine_tune_renders_as_its_run_did(tmp_path, saved_in, asked, mode):
    (tmp_path / asked).mkdir(parents=True)
    if saved_in:
        (tmp_path / saved_in / "chat_rendering.json").write_text(json.dumps({"tools": mode}))
    path = str(tmp_path / asked)
    merged = asked.endswith("merged")
    assert rendering_mode(path if merged else "tiny-llama-test", None if merged else path) == mode
