"""The prompts the base model is measured with: zero-shot, and few-shot within a token budget.

Few-shot demonstrations are training examples put before the test prompt as earlier user and
assistant turns of the same chat, so the model sees them in its own chat template. They are
drawn either at random (seeded per test item, so an item's draw does not depend on how many
items are evaluated) or as the most similar training prompts by token overlap (Jaccard index of
the sets of token ids); the most similar one is placed last, nearest the question.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass

from tunesmith.chat.tools import Tool
from tunesmith.data.formats import Example, Message, with_system
from tunesmith.data.tokenize import encode_chat

# With no k configured, use as many demonstrations as fit the budget, up to this many: beyond
# ~8, in-context gains flatten while every request pays for the extra prompt tokens.
MAX_AUTO_SHOTS = 8
# eval.few_shot_k: 0 leaves the few-shot variant out (e.g. comparing two fine-tunes, where showing
# examples to either answers no question and costs the longest prompts of the evaluation).
FEW_SHOT_OFF = "few-shot skipped: eval.few_shot_k is 0"


@dataclass(frozen=True)
class FewShotPrompt:
    ids: list[int]
    shots: int  # demonstrations that fit (fewer than asked when the budget ran out)


def context_budget(model, max_new_tokens: int, configured: int | None) -> int:
    """Prompt tokens allowed: the configured budget, else the context length minus the answer."""
    if configured is not None:
        return configured
    return model.config.max_position_embeddings - max_new_tokens


def demonstrations(examples: Sequence[Example]) -> list[tuple[Message, ...]]:
    """Training chats usable as demonstrations: system turns dropped, ending in an answer."""
    demos = []
    for example in examples:
        turns = tuple(m for m in example.messages if m.role != "system")
        if turns and turns[-1].role == "assistant" and any(m.role == "user" for m in turns):
            demos.append(turns)
    return demos


def _prompt_text(messages: Sequence[Message]) -> str:
    return "\n".join(m.content for m in messages if m.role == "user")


class FewShotSelector:
    """Ranks training demonstrations for one test prompt, excluding ones with the same prompt."""

    def __init__(self, demos: Sequence[tuple[Message, ...]], tokenizer, selection: str, seed: int):
        self.demos = list(demos)
        self.selection = selection
        self.seed = seed
        self.tokenizer = tokenizer
        self._prompts = [_prompt_text(d[:-1]) for d in self.demos]
        if selection == "similar":
            encoded = tokenizer(self._prompts, add_special_tokens=False).input_ids if self.demos else []
            self._token_sets = [set(ids) for ids in encoded]

    def ranked(self, prompt: Sequence[Message], item_index: int, count: int) -> list[tuple[Message, ...]]:
        query = _prompt_text(prompt)
        # One extra candidate covers the test prompt itself appearing in the training data.
        want = min(count + 1, len(self.demos))
        if self.selection == "similar":
            tokens = set(self.tokenizer(query, add_special_tokens=False).input_ids)
            order = heapq.nlargest(
                want,
                range(len(self.demos)),
                key=lambda i: len(tokens & self._token_sets[i]) / (len(tokens | self._token_sets[i]) or 1),
            )
        else:
            order = random.Random(f"{self.seed}/{item_index}").sample(range(len(self.demos)), want)
        return [self.demos[i] for i in order if self._prompts[i] != query][:count]


def few_shot_prompt(
    tokenizer,
    prompt: Sequence[Message],
    ranked: Sequence[tuple[Message, ...]],
    system: str | None,
    budget: int,
    tools: tuple[Tool, ...] = (),
    parallel_tool_calls: bool = True,
) -> FewShotPrompt:
    """The test prompt after as many of the ranked demonstrations as fit in ``budget`` tokens,
    offering the test example's ``tools``."""
    own = with_system(prompt, system)
    head = tuple(m for m in own if m.role == "system")
    question = tuple(m for m in own if m.role != "system")
    shots = len(ranked)
    while True:
        # Reversed so that the best-ranked demonstration sits right before the question.
        turns = [m for demo in reversed(ranked[:shots]) for m in demo]
        ids = encode_chat(tokenizer, (*head, *turns, *question), tools, parallel_tool_calls)
        if len(ids) <= budget or shots == 0:
            return FewShotPrompt(ids, shots)
        shots -= 1
