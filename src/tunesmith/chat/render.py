"""Which rendering a tokenizer gets, and the inputs its chat template is called with.

A template that mentions `tools` (Qwen-style: `tools=` and `tool_calls` in messages) renders tools
itself ("template"); any other (SmolLM2's) gets the fallback format of chat/tools.py ("fallback").
Conversations without tools render exactly as plain `{"role", "content"}` chats either way.

The rendering a run trained with is saved beside its config (and in merged/) as RENDERING_FILE,
`{"tools": "template" | "fallback", "fallback_version": 1 | null}`, so the export and the service
render prompts the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.chat.messages import Message
from tunesmith.chat.tools import FALLBACK_VERSION, Tool, assistant_text, fallback_system, render_tool_responses
from tunesmith.paths import write_text_atomic

TEMPLATE, FALLBACK = "template", "fallback"
RENDERING_FILE = "chat_rendering.json"


def rendering(tokenizer) -> str:
    """TEMPLATE if the tokenizer's chat template renders tools itself, else FALLBACK."""
    template = tokenizer.chat_template
    return TEMPLATE if isinstance(template, str) and "tools" in template else FALLBACK


def template_inputs(
    messages, tools: tuple[Tool, ...] = (), parallel_tool_calls: bool = True, mode: str = FALLBACK
) -> tuple[list[dict], list[dict] | None]:
    """(the message dicts, the `tools=` argument) to call the chat template with."""
    if mode == TEMPLATE:
        return [_template_dict(m) for m in messages], ([tool.openai() for tool in tools] or None)
    return _fallback_dicts(messages, tools, parallel_tool_calls), None


def render_prompt(
    tokenizer, messages, tools: tuple[Tool, ...] = (), parallel_tool_calls: bool = True, mode: str | None = None
) -> str:
    """The text a model is asked with: the conversation and the assistant's generation prompt."""
    chat, tools_arg = template_inputs(messages, tools, parallel_tool_calls, mode or rendering(tokenizer))
    return tokenizer.apply_chat_template(chat, tools=tools_arg, tokenize=False, add_generation_prompt=True)


def reply_text(message: Message, mode: str) -> str:
    """What an assistant turn renders to just before its end-of-turn token, as far as known: in
    the template rendering, a turn with calls is the template's business ("": any ending)."""
    if mode == TEMPLATE:
        return "" if message.tool_calls else message.content
    return assistant_text(message.content, message.tool_calls)


def rendering_record(tokenizer) -> dict:
    mode = rendering(tokenizer)
    return {"tools": mode, "fallback_version": FALLBACK_VERSION if mode == FALLBACK else None}


def save_rendering(folder: Path, tokenizer) -> None:
    write_text_atomic(Path(folder) / RENDERING_FILE, json.dumps(rendering_record(tokenizer)) + "\n")


def read_rendering(folder: Path) -> dict | None:
    """The record saved with a run (None for runs from before it was saved: they had no tools)."""
    path = Path(folder) / RENDERING_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _template_dict(m: Message) -> dict:
    out = {"role": m.role, "content": m.content}
    if m.tool_calls:
        # Templates read `arguments` as a mapping (Qwen's pipes it through tojson).
        out["tool_calls"] = [_template_call(c) for c in m.tool_calls]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        out["name"] = m.name
    return out


def _template_call(c) -> dict:
    call = {"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
    return {"id": c.id, **call} if c.id else call


def _fallback_dicts(messages, tools, parallel_tool_calls: bool) -> list[dict]:
    out: list[dict] = []
    if tools:
        system = fallback_system(tools, parallel_tool_calls)
        if messages and messages[0].role == "system":
            system, messages = f"{system}\n\n{messages[0].content}", messages[1:]
        out.append({"role": "system", "content": system})
    results: list[str] = []
    for m in messages:
        if m.role == "tool":
            results.append(m.content)
            continue
        if results:  # consecutive results share one user turn (templates may require alternation)
            out.append({"role": "user", "content": render_tool_responses(results)})
            results = []
        out.append({"role": m.role, "content": assistant_text(m.content, m.tool_calls) if m.tool_calls else m.content})
    if results:
        out.append({"role": "user", "content": render_tool_responses(results)})
    return out


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts a BOS before every text (Gemma, Llama 2): the model was pretrained with
    it there, and Gemma's outputs fall apart without it."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    return tokenizer("x")["input_ids"] == [bos, *plain]
