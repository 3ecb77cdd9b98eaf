"""Tool calling and structured output of /v1/chat/completions.

A request is read as a conversation the way a training line is (data.formats.read_chat), so a
bad tool or a tool message answering no call is a 400 naming the field. ``tool_choice: "none"``
renders no tools at all (the model is not offered them); "required" and a named function hold the
answer to one call by the grammar of tunesmith.constrained, ``response_format`` to its JSON
Schema. Calls are read back from the text with chat.tools.parse_tool_calls; a block it cannot
read stays in the content.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.chat.messages import Message
from tunesmith.chat.render import read_rendering
from tunesmith.chat.tools import CALL_OPEN, Tool, ToolCall, parse_tool_calls
from tunesmith.data.formats import Example, n_errors, read_chat
from tunesmith.serve.errors import APIError
from tunesmith.serve.schemas import ChatRequest
from tunesmith.serve.store import new_id


def read_conversation(body: ChatRequest) -> Example:
    """The request's messages and tools, checked as data.formats.read_chat checks them."""
    raw = body.chat_dict()
    uses_tools = body.tools is not None or any(
        m.role == "tool" or m.tool_calls is not None or m.tool_call_id is not None for m in body.messages
    )
    if not uses_tools:  # a plain chat: any text, empty included, as before tools were accepted
        for i, message in enumerate(raw["messages"]):
            if message.get("content") is None:
                raise APIError(400, f"messages[{i}].content: missing", param=f"messages[{i}].content")
        return Example(0, tuple(Message(m["role"], m["content"]) for m in raw["messages"]))
    chat, problems = read_chat(raw)
    if chat is None or n_errors(problems):
        field, reason = next(p for p in problems if len(p) == 2)
        raise APIError(400, f"{field}: {reason}", param=field)
    return chat


def offered_tools(body: ChatRequest, chat: Example) -> tuple[Tool, ...]:
    """The tools the model is shown: none for ``tool_choice: "none"``."""
    return () if body.tool_choice == "none" else chat.tools


def request_grammar(body: ChatRequest, tools: tuple[Tool, ...]):
    """The grammar (uncompiled) the answer is held to, or None for free text."""
    from jsonschema import SchemaError

    from tunesmith.chat.schemas import schema_problem, schema_validator
    from tunesmith.constrained import json_schema_grammar, tool_choice_grammar

    choice = body.tool_choice
    if choice not in (None, "none", "auto"):
        if not tools:
            raise APIError(400, "tool_choice asks for a tool call, but the request has no tools", param="tool_choice")
        try:
            return tool_choice_grammar(tools, choice if isinstance(choice, str) else choice.model_dump())
        except Exception as error:
            raise APIError(400, f"tool_choice: {error}", param="tool_choice") from None
    form = body.response_format
    if form is None or form.type == "text":
        return None
    schema = {"type": "object"} if form.type == "json_object" else (form.json_schema.schema_ or {})
    param = "response_format.json_schema.schema"
    try:
        schema_validator(schema)
    except SchemaError as error:
        raise APIError(400, f"{param}: {schema_problem(error)}", param=param) from None
    try:
        return json_schema_grammar(schema)
    except Exception as error:
        raise APIError(400, f"{param}: not supported for constrained decoding: {error}", param=param) from None


def rendering_mode(base: str, adapter_path: str | None) -> str | None:
    """How the fine-tune's run rendered tools (its saved record), or None: the tokenizer decides."""
    if adapter_path is not None:
        path = Path(adapter_path)
        folders = [path, path.parent, path.parent.parent]  # the adapter, its run, a checkpoint's run
    else:
        folders = [Path(base)] if Path(base).is_absolute() else []  # a merged fine-tune is its own base
    for folder in folders:
        if folder.is_dir() and (record := read_rendering(folder)) is not None:
            return record.get("tools")
    return None


def call_items(calls: list[ToolCall]) -> list[dict]:
    """OpenAI's `tool_calls`: each call with a fresh id and its arguments as a JSON string."""
    return [
        {
            "id": new_id("call_"),
            "type": "function",
            "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)},
        }
        for c in calls
    ]


class CallSplitter:
    """Streamed text split into content that can be sent at once and calls read at the end: text
    passes until a ``<tool_call>`` opener appears (a possible start of one is held back), and
    everything from the opener is kept until the generation ends."""

    def __init__(self, active: bool):
        self.active, self.held, self.calling = active, "", False

    def feed(self, text: str) -> str:
        """The part of the text so far that is surely content and not yet sent."""
        if not self.active:
            return text
        self.held += text
        if self.calling:
            return ""
        at = self.held.find(CALL_OPEN)
        if at >= 0:
            out, self.held, self.calling = self.held[:at], self.held[at:], True
            return out
        keep = next((n for n in range(len(CALL_OPEN) - 1, 0, -1) if self.held.endswith(CALL_OPEN[:n])), 0)
        cut = len(self.held) - keep
        out, self.held = self.held[:cut], self.held[cut:]
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(the content not yet sent, the calls read from the held text)."""
        if not self.calling:
            return self.held, []
        return parse_tool_calls(self.held)
