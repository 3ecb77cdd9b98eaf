import json

import pytest

from tunesmith.data.formats import Example, LineError, Message, detect_format, read_examples
from tunesmith.errors import TunesmithError


def _write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _jsonl(*rows) -> str:
    return "\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n"


def _chat(prompt, completion, system=None):
    head = (Message("system", system),) if system else ()
    return head + (Message("user", prompt), Message("assistant", completion))


@pytest.mark.parametrize(
    "name, content, columns, fmt, first",
    [
        (
            "chat.jsonl",
            _jsonl({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}),
            None,
            "messages",
            Example(1, _chat("Hi", "Yo")),
        ),
        (
            "pc.jsonl",
            _jsonl({"prompt": "2+2?", "completion": " 4"}),
            None,
            "prompt_completion",
            Example(1, _chat("2+2?", " 4")),
        ),
        (
            "alpaca.json",
            json.dumps([{"instruction": "Add", "input": "2 and 2", "output": "4"}], indent=2),
            None,
            "alpaca",
            Example(1, _chat("Add\n\n2 and 2", "4")),
        ),
        (
            "alpaca.jsonl",
            _jsonl({"instruction": "Say hi", "input": " ", "output": "hi"}),
            None,
            "alpaca",
            Example(1, _chat("Say hi", "hi")),
        ),
        (
            "e2e.csv",
            'mr,ref\n"name[X], food[Thai]",X serves Thai food.\n',
            {"prompt": "mr", "completion": "ref"},
            "csv",
            Example(2, _chat("name[X], food[Thai]", "X serves Thai food.")),
        ),
        (
            "auto.csv",
            "system,prompt,completion\nBe brief,Hi,Yo\n",
            None,
            "csv",
            Example(2, _chat("Hi", "Yo", system="Be brief")),
        ),
        (
            "text.jsonl",
            _jsonl({"text": "Once upon a time."}),
            None,
            "text",
            Example(1, text="Once upon a time."),
        ),
        (
            "book.txt",
            "\n\nFirst para\ngoes on.\n\n\nSecond.\n",
            None,
            "text",
            Example(3, text="First para\ngoes on."),
        ),
    ],
)
def test_auto_detects_and_reads_each_format(tmp_path, name, content, columns, fmt, first):
    path = _write(tmp_path, name, content)
    loaded = read_examples(path, columns=columns)
    assert (loaded.format, loaded.errors, loaded.examples[0]) == (fmt, [], first)
    assert detect_format(path) == fmt


def test_txt_paragraphs_start_at_their_first_line(tmp_path):
    loaded = read_examples(_write(tmp_path, "book.txt", "a\nb\n\nc\n  \n\nd"))
    assert [(e.line, e.text) for e in loaded.examples] == [(1, "a\nb"), (4, "c"), (7, "d")]


def test_json_array_lines_are_indices_and_blank_jsonl_lines_are_skipped(tmp_path):
    row = {"prompt": "p", "completion": "c"}
    assert [e.line for e in read_examples(_write(tmp_path, "a.json", json.dumps([row, row]))).examples] == [
        1,
        2,
    ]
    assert [e.line for e in read_examples(_write(tmp_path, "b.jsonl", _jsonl(row, "", "  ", row))).examples] == [
        1,
        4,
    ]


def test_unicode_line_separator_inside_a_string_does_not_split_the_line(tmp_path):
    loaded = read_examples(_write(tmp_path, "a.jsonl", _jsonl({"prompt": "a\u2028b", "completion": "c"})))
    assert (loaded.errors, loaded.examples[0].messages[0].content) == ([], "a\u2028b")


def test_detection_skips_lines_that_are_not_objects(tmp_path):
    path = _write(tmp_path, "a.jsonl", _jsonl("{oops", {"text": "t"}))
    assert detect_format(path) == "text"


GOOD = {
    "messages": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    "prompt_completion": {"prompt": "q", "completion": "a"},
    "alpaca": {"instruction": "q", "output": "a"},
    "text": {"text": "t"},
}


def _msgs(*messages):
    return {"messages": list(messages)}


USER = {"role": "user", "content": "q"}


@pytest.mark.parametrize(
    "fmt, bad, field, reason",
    [
        ("messages", '{"messages": [', None, "invalid JSON: Expecting value (column 15)"),
        ("messages", "[1, 2]", None, "expected a JSON object, got array"),
        ("prompt_completion", {"prompt": "q"}, "completion", "missing key"),
        (
            "prompt_completion",
            {"prompt": "q", "completion": "a", "completions": "a"},
            "completions",
            "unknown key (expected prompt, completion)",
        ),
        ("prompt_completion", {"prompt": 3, "completion": "a"}, "prompt", "expected a string, got number"),
        ("prompt_completion", {"prompt": "q", "completion": " \n"}, "completion", "empty content"),
        (
            "alpaca",
            {"instruction": "q", "input": None, "output": "a"},
            "input",
            "expected a string, got null",
        ),
        ("text", {"text": ""}, "text", "empty content"),
        ("messages", {"messages": "hi"}, "messages", "expected an array, got string"),
        ("messages", {"messages": []}, "messages", "empty conversation"),
        ("messages", _msgs(USER, "a"), "messages[1]", "expected an object, got string"),
        ("messages", _msgs(USER, {"role": "assistant"}), "messages[1].content", "missing key"),
        (
            "messages",
            _msgs(USER, {"role": "assistant", "content": "a", "nickname": "x"}),
            "messages[1].nickname",
            "unknown key (expected role, content, weight, tool_calls, function_call, tool_call_id, name)",
        ),
        (
            "messages",
            _msgs(USER, {"role": "bot", "content": "a"}),
            "messages[1].role",
            "unknown role 'bot' (expected system, user, assistant, tool, function)",
        ),
        (
            "messages",
            _msgs(USER, {"role": None, "content": "a"}),
            "messages[1].role",
            "expected a string, got null",
        ),
        (
            "messages",
            _msgs(USER, {"role": "assistant", "content": ""}),
            "messages[1].content",
            "empty content",
        ),
        ("messages", _msgs(USER), "messages", "no assistant message to train on"),
        (
            "messages",
            _msgs(USER, {"role": "assistant", "content": "a", "weight": 2}),
            "messages[1].weight",
            "weight must be 0 or 1, got 2",
        ),
        (
            "messages",
            _msgs(USER, {"role": "assistant", "content": "a", "weight": True}),
            "messages[1].weight",
            "weight must be 0 or 1, got true",
        ),
        (
            "messages",
            _msgs({**USER, "weight": 1}, {"role": "assistant", "content": "a"}),
            "messages[0].weight",
            "weight is only allowed on assistant messages, not user",
        ),
        (
            "messages",
            _msgs(USER, {"role": "assistant", "content": "a", "weight": 0}),
            "messages",
            "every assistant message has weight 0: nothing to train on",
        ),
        (
            "messages",
            _msgs({"role": "assistant", "content": "a"}, USER),
            "messages[0].role",
            "a conversation cannot start with an assistant message",
        ),
    ],
)
def test_bad_line_is_reported_with_line_field_and_reason(tmp_path, fmt, bad, field, reason):
    path = _write(tmp_path, "data.jsonl", _jsonl(GOOD[fmt], "", bad, GOOD[fmt]))
    loaded = read_examples(path, format=fmt)
    assert loaded.errors == [LineError(str(path), 3, field, reason)]
    assert [e.line for e in loaded.examples] == [1, 4]


def test_line_error_str_names_file_line_and_field():
    error = LineError("data.jsonl", 12, "messages[1].role", "unknown role 'bot'")
    assert str(error) == "data.jsonl:12: messages[1].role: unknown role 'bot'"
    assert str(LineError("d.csv", 3, None, "dup", "warning")) == "d.csv:3: warning: dup"


def test_csv_rows_report_their_physical_line(tmp_path):
    path = _write(tmp_path, "d.csv", 'mr,ref\na,b\n"multi\nline",c\n\nx,\ny,z,w\n')
    loaded = read_examples(path, columns={"prompt": "mr", "completion": "ref"})
    assert [e.line for e in loaded.examples] == [2, 3]
    assert loaded.examples[1].messages[0].content == "multi\nline"
    assert [(e.line, e.field, e.reason) for e in loaded.errors] == [
        (6, "ref", "empty content"),
        (7, None, "expected 2 fields, got 3"),
    ]


@pytest.mark.parametrize(
    "name, content, kwargs, message",
    [
        ("missing.jsonl", None, {}, "data file not found: {path}"),
        ("empty.jsonl", "", {}, "{path}: no examples"),
        ("blank.jsonl", "\n  \n", {}, "{path}: no examples"),
        (
            "latin1.jsonl",
            b'{"text": "a"}\n{"text": "caf\xe9"}\n',
            {},
            "{path}:2: not valid UTF-8 (byte 0xe9)",
        ),
        (
            "a.jsonl",
            '{"text": "a"}\n',
            {"format": "vicuna"},
            "unknown data format 'vicuna' (expected auto,",
        ),
        ("odd.jsonl", '{"question": "q", "answer": "a"}\n', {}, "first object has keys answer, question"),
        ("arr.json", "[\n{,\n]", {}, "{path}:2: invalid JSON array"),
        ("e2e.csv", "mr,ref\na,b\n", {}, "{path}: CSV needs a column mapping"),
        ("e2e.csv", "mr,ref\na,b\n", {"columns": {"prompt": "mr", "completion": "text"}}, "column 'text'"),
        ("e2e.csv", "mr,ref\na,b\n", {"columns": {"prompt": "mr"}}, "mapping needs prompt and completion"),
        ("a.jsonl", '{"text": "a"}\n', {"columns": {"prompt": "a"}}, "only applies to CSV files"),
    ],
)
def test_whole_file_problems_raise_naming_the_file(tmp_path, name, content, kwargs, message):
    path = tmp_path / name if content is None else _write(tmp_path, name, content)
    with pytest.raises(TunesmithError) as raised:
        read_examples(path, **kwargs)
    assert message.format(path=path) in str(raised.value)
    assert str(path) in str(raised.value) or "unknown data format" in message
