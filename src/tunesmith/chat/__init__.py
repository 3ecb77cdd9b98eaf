"""Rendering of conversations (messages, tools, tool calls) to text and parsing calls back out.

One home for what a chat looks like to the model, used by data (training), generation,
evaluation and serving alike, so a model is asked at inference exactly as it was trained:

- `messages.Message`: one turn, with its tool calls or the call it answers;
- `tools`: `Tool`, `ToolCall` and the one fallback format for templates without tool support;
- `render`: which rendering a tokenizer gets ("template" or "fallback"), the message dicts and
  `tools=` argument its chat template is called with, and the record saved with a run.
"""
