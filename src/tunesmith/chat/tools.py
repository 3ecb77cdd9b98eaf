"""Tools, tool calls, and the fallback format for chat templates that know nothing of tools.

The fallback format (FALLBACK_VERSION 1), used identically for training, evaluation and serving:

- the tools, as a JSON array of `{"name", "description", "parameters"}`, go in the system turn
  after a short instruction (`fallback_system`), ahead of any system prompt of the conversation;
- each call of an assistant turn is one line `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
  after the turn's text, if any (`render_tool_calls`);
- tool results go in a user turn, one `<tool_response>...</tool_response>` line per result, the
  results of consecutive tool messages in one turn (`render_tool_responses`).

`parse_tool_calls` reads calls back out of generated text; Qwen-style templates emit the same tags
(with newlines around the JSON), so it reads their output too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

FALLBACK_VERSION = 1
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
_DECODER = json.JSONDecoder()


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class Tool:
    """A function the model may call: OpenAI's `{"type": "function", "function": {...}}`."""

    name: str
    description: str = ""
    parameters: dict = field(default_factory=dict)  # a JSON Schema (BFCL's "dict" type allowed)

    def __hash__(self) -> int:  # dicts are unhashable; examples are compared by content
        return hash((self.name, self.description, _canonical(self.parameters)))

    def function(self) -> dict:
        out = {"name": self.name, "description": self.description}
        return out | {"parameters": self.parameters} if self.parameters else out

    def openai(self) -> dict:
        return {"type": "function", "function": self.function()}


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict
    id: str | None = None

    def __hash__(self) -> int:
        return hash((self.name, _canonical(self.arguments), self.id))

    def openai(self) -> dict:
        """OpenAI's form: `arguments` a JSON string."""
        call = {"type": "function", "function": {"name": self.name, "arguments": json.dumps(self.arguments)}}
        return {"id": self.id, **call} if self.id else call


def fallback_system(tools, parallel_tool_calls: bool = True) -> str:
    """The instruction and tool list that open the system turn in the fallback format."""
    listing = json.dumps([tool.function() for tool in tools], ensure_ascii=False)
    how = "one line per call" if parallel_tool_calls else "at most one call per turn"
    return (
        f"You can call these tools:\n{listing}\n"
        f"To call a tool, answer with {how}: "
        f'{CALL_OPEN}{{"name": <tool name>, "arguments": <JSON object>}}{CALL_CLOSE}\n'
        f"Results come back as {RESPONSE_OPEN}...{RESPONSE_CLOSE}."
    )


def render_tool_calls(calls) -> str:
    """One `<tool_call>` line per call, in order."""
    return "\n".join(
        CALL_OPEN + json.dumps({"name": c.name, "arguments": c.arguments}, ensure_ascii=False) + CALL_CLOSE
        for c in calls
    )


def render_tool_responses(contents) -> str:
    return "\n".join(f"{RESPONSE_OPEN}{content}{RESPONSE_CLOSE}" for content in contents)


def assistant_text(content: str, calls) -> str:
    """An assistant turn's text in the fallback format: its content, then its calls."""
    return "\n".join(part for part in (content, render_tool_calls(calls)) if part)


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """(the text without its readable calls, the calls in order). Never raises: a `<tool_call>`
    block whose JSON is not `{"name": string, "arguments": object}` stays in the content."""
    calls, kept, end, at = [], [], 0, text.find(CALL_OPEN)
    while at >= 0:
        # The JSON is decoded where it starts, so a "</tool_call>" inside a string argument is no end.
        block = _read_block(text, at + len(CALL_OPEN))
        if block is None:
            at = text.find(CALL_OPEN, at + 1)
            continue
        call, after = block
        kept.append(text[end:at])
        calls.append(call)
        end, at = after, text.find(CALL_OPEN, after)
    kept.append(text[end:])
    content = "".join(kept)
    return (content.strip() if calls else content), calls


def _read_block(text: str, start: int) -> tuple[ToolCall, int] | None:
    """The call whose JSON starts at `start` (after blanks) and its end past `</tool_call>`, or None."""
    start = len(text) - len(text[start:].lstrip())
    try:
        value, end = _DECODER.raw_decode(text, start)
    except ValueError:
        return None
    end = len(text) - len(text[end:].lstrip())
    if not text.startswith(CALL_CLOSE, end) or not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):  # OpenAI's form: arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    return (ToolCall(value["name"], arguments), end + len(CALL_CLOSE)) if isinstance(arguments, dict) else None
