"""One turn of a conversation."""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.chat.tools import ToolCall


@dataclass(frozen=True)
class Message:
    role: str  # system, user, assistant or tool
    content: str  # "" for an assistant turn that only calls tools
    weight: int = 1  # only assistant messages: 0 = do not train on this turn (OpenAI's `weight`)
    tool_calls: tuple[ToolCall, ...] = ()  # assistant messages
    tool_call_id: str | None = None  # tool messages: the call answered (None: a legacy `function` result)
    name: str | None = None  # tool messages: the function that answered, where known
