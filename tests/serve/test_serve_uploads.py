"""Hostile upload contents: a clear 400 in OpenAI's error shape, never a 500, memory bounded."""

from __future__ import annotations

import io
import tracemalloc

import httpx
import openai
import pytest
from test_serve_api import chat_rows, jsonl

from tunesmith.serve.errors import APIError
from tunesmith.serve.routes.files import MAX_LINE_BYTES, check_jsonl

# (upload contents, what the 400's message names)
HOSTILE = [
    (b'{"n": ' + b"9" * 5000 + b"}\n", "line 1: not valid JSON (Exceeds the limit (4300 digits)"),
    (b"[" * 100_000 + b"\n", "line 1: nested too deeply"),
    (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "line 1: nested too deeply"),
    (jsonl(chat_rows(1)) + b'{"text": "\xff\xfe"}\n', "line 2: not valid UTF-8"),
    (b'{"loss": NaN}\n', "line 1: not valid JSON (NaN is not a JSON number)"),
    (b'{"loss": -Infinity}\n', "line 1: not valid JSON (-Infinity is not a JSON number)"),
    (b"[1, 2]\n", "line 1: a JSON list, not an object"),
    (b"\n".join([b"{"] * 9) + b"\n", "(and 4 more)"),
    (b"\n \n", "the file has no examples"),
]


@pytest.mark.parametrize("content, message", HOSTILE, ids=range(len(HOSTILE)))
def test_check_jsonl_names_the_line(tmp_path, content, message):
    path = tmp_path / "upload.jsonl"
    path.write_bytes(content)
    with pytest.raises(APIError) as caught:
        check_jsonl(path)
    assert caught.value.status == 400 and caught.value.code == "invalid_file_format"
    assert message in caught.value.message


def test_a_100_mb_line_is_refused_in_bounded_memory(tmp_path):
    path = tmp_path / "one-line.jsonl"
    with open(path, "wb") as fh:
        fh.write(jsonl(chat_rows(1)))
        fh.write(b'{"text": "')
        for _ in range(100):
            fh.write(b"a" * 2**20)
        fh.write(b'"}\n')
        fh.write(jsonl(chat_rows(1)))
    tracemalloc.start()
    try:
        with pytest.raises(APIError) as caught:
            check_jsonl(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"line 2: longer than {MAX_LINE_BYTES} bytes" in caught.value.message
    assert "line 3" not in caught.value.message  # the line after it is read as a line of its own
    assert peak < 4 * MAX_LINE_BYTES, peak  # reading the line whole would take over 100 MB


def test_hostile_uploads_answer_400_and_leave_nothing(fake_server):
    server = fake_server()
    client = server.client(server.key("acme"))
    before = sorted((server.home / "files").iterdir())
    long_line = b'{"text": "' + b"a" * (MAX_LINE_BYTES + 1) + b'"}\n'
    for content, message in [*HOSTILE, (long_line, f"longer than {MAX_LINE_BYTES} bytes")]:
        with pytest.raises(openai.BadRequestError) as caught:
            client.files.create(file=("train.jsonl", io.BytesIO(content)), purpose="fine-tune")
        error = caught.value.response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "invalid_file_format" and message in error["message"], error
    assert sorted((server.home / "files").iterdir()) == before
    assert httpx.get(server.url + "/models", headers={"Authorization": f"Bearer {server.key('acme')}"}).is_success
