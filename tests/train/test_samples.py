"""The before/after sample table asks the model as training and evaluation do: with the example's tools."""

from __future__ import annotations

import pytest

from tunesmith.chat.messages import Message
from tunesmith.chat.tools import Tool, ToolCall
from tunesmith.data.formats import Example
from tunesmith.generation import Generations
from tunesmith.train import samples

WEATHER = Tool("get_weather", "Weather in a city", {"type": "object", "properties": {"city": {"type": "string"}}})
ASK = Message("user", "Weather in Paris?")
CALL = Message("assistant", "", tool_calls=(ToolCall("get_weather", {"city": "Paris"}, "call_1"),))


@pytest.mark.parametrize(
    ("example", "offered"),
    [
        (Example(1, (ASK, CALL), tools=(WEATHER,)), True),
        (Example(1, (ASK, Message("assistant", "Sunny."))), False),
    ],
)
def test_sample_prompts_offer_the_examples_tools(smol_tokenizer, monkeypatch, example, offered):
    asked = []

    def fake_generate(model, tokenizer, prompts, **kwargs):
        asked.extend(tokenizer.decode(p) for p in prompts)
        return Generations(["x"] * len(prompts), [1] * len(prompts), 1.0)

    monkeypatch.setattr(samples, "generate", fake_generate)
    table = samples.SampleSet([example], n=2, max_new_tokens=4)
    table.generate("base", None, smol_tokenizer)
    assert len(asked) == 1 and ("get_weather" in asked[0]) is offered
    assert asked[0].rstrip().endswith("assistant")  # the generation prompt, not the reference call
    assert table.items[0]["base"] == "x" and table.items[0]["input"] == "Weather in Paris?"
