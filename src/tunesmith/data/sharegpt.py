"""ShareGPT conversations (LLaMA-Factory's and Glaive's form) as OpenAI chat examples.

`{"conversations": [{"from": "human" | "gpt" | "system" | "function_call" | "observation",
"value": ...}], "tools": [...] or a JSON string of it, "system": ...}`: a `function_call` turn is an
assistant turn whose value is the call's JSON `{"name", "arguments"}` (or an array of them, for
parallel calls); an `observation` turn is the result of the next unanswered call. The converted
example goes through the OpenAI reader, and its problems are named by the ShareGPT field.
"""

from __future__ import annotations

import json
import re

_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "function_call": "assistant", "observation": "tool"}


def sharegpt_as_openai(obj: dict) -> tuple[dict | list, list]:
    """(OpenAI's `{messages, tools}`, the ShareGPT source of each message: a turn index or
    "system"), or (the problems, []) when the conversation cannot be read as one."""
    turns, problems = obj["conversations"], []
    if not isinstance(turns, list):
        return [("conversations", "expected an array of turns")], []
    messages, sources, pending = [], [], []
    system = obj.get("system")
    if system is not None:
        messages.append({"role": "system", "content": system})
        sources.append("system")
    for k, turn in enumerate(turns):
        where = f"conversations[{k}]"
        if not isinstance(turn, dict) or set(turn) != {"from", "value"}:
            problems.append((where, 'expected {"from": ..., "value": ...}'))
            continue
        role = _ROLES.get(turn["from"]) if isinstance(turn["from"], str) else None
        if role is None:
            problems.append((f"{where}.from", f"unknown speaker {turn['from']!r} (expected {', '.join(_ROLES)})"))
            continue
        message = {"role": role, "content": turn["value"]}
        if turn["from"] == "function_call":
            calls = _calls(turn["value"], k, where, problems)
            if calls is None:
                continue
            message = {"role": "assistant", "content": None, "tool_calls": calls}
            pending = [call["id"] for call in calls]
        elif role == "tool":
            message["tool_call_id"] = pending.pop(0) if pending else "(none)"
        messages.append(message)
        sources.append(k)
    tools = obj.get("tools", [])
    if isinstance(tools, str):
        try:
            tools = json.loads(tools) if tools.strip() else []
        except json.JSONDecodeError as e:
            problems.append(("tools", f"not valid JSON: {e.msg} (column {e.colno})"))
    if problems:
        return problems, []
    if isinstance(tools, list):  # LLaMA-Factory lists bare functions; OpenAI wraps them
        tools = [t if isinstance(t, dict) and "function" in t else {"type": "function", "function": t} for t in tools]
    return {"messages": messages, "tools": tools}, sources


def _calls(value, k: int, where: str, problems: list) -> list | None:
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as e:
        problems.append((f"{where}.value", f"not valid JSON: {e.msg} (column {e.colno})"))
        return None
    items = parsed if isinstance(parsed, list) else [parsed]
    if not items or not all(isinstance(item, dict) for item in items):
        problems.append((f"{where}.value", 'expected a call {"name", "arguments"} or an array of them'))
        return None
    return [
        {
            "id": f"call_{k}_{j}",
            "type": "function",
            "function": {"name": i.get("name"), "arguments": i.get("arguments", {})},
        }
        for j, i in enumerate(items)
    ]


_MESSAGE_FIELD = re.compile(r"messages\[(\d+)\](\.role)?(.*)")


def sharegpt_field(field: str | None, sources: list) -> str | None:
    """The ShareGPT field a problem of the converted example is about: `messages[3].tool_calls[0]
    .function.arguments` -> `conversations[3].value`, `tools[0].function.name` -> `tools[0].name`."""
    if field is None or field == "messages":
        return "conversations" if field else None
    match = _MESSAGE_FIELD.fullmatch(field)
    if match is None:
        return field.replace(".function.", ".", 1) if field.startswith("tools[") else field
    source = sources[int(match.group(1))]
    if source == "system":
        return "system"
    return f"conversations[{source}]" + (".from" if match.group(2) else ".value" if match.group(3) else "")
