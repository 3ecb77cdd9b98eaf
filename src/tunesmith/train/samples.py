"""A few held-out prompts answered before and after training, so a run shows what changed."""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.data.formats import Example, split_prompt
from tunesmith.data.tokenize import encode_chat
from tunesmith.generation import generate
from tunesmith.paths import write_text_atomic

_INPUTS = ("prompt", "tools", "parallel_tool_calls")  # what the model is asked with, not shown in the table


class SampleSet:
    def __init__(self, examples: list[Example], n: int, max_new_tokens: int):
        self.items: list[dict] = []
        seen = set()
        for example in examples:
            split = split_prompt(example.messages)
            if split is None or len(self.items) >= n:
                continue
            prompt, reference = split
            key = tuple(prompt)
            if key in seen:
                continue
            seen.add(key)
            self.items.append(
                {
                    "prompt": prompt,
                    "tools": example.tools,
                    "parallel_tool_calls": example.parallel_tool_calls,
                    "input": prompt[-1].content,
                    "reference": reference,
                }
            )
        self.max_new_tokens = max_new_tokens

    def generate(self, variant: str, model, tokenizer) -> None:
        if not self.items:
            return
        prompts = [
            encode_chat(tokenizer, item["prompt"], item["tools"], item["parallel_tool_calls"]) for item in self.items
        ]
        out = generate(model, tokenizer, prompts, max_new_tokens=self.max_new_tokens, batch_size=len(prompts))
        for item, text in zip(self.items, out.texts, strict=True):
            item[variant] = text.strip()

    def save(self, path: Path) -> None:
        rows = [
            {k: v for k, v in item.items() if k not in ("prompt", "tools", "parallel_tool_calls")}
            for item in self.items
        ]
        write_text_atomic(path, json.dumps(rows, indent=1))

    def load(self, path: Path) -> None:
        if path.exists():
            for item, saved in zip(self.items, json.loads(path.read_text()), strict=False):
                item.update({k: v for k, v in saved.items() if k in ("base", "finetuned")})
