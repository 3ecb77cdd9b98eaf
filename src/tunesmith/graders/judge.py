"""``score_model``: a local model (any tunesmith model name, Hugging Face folder or run folder)
reads the grader's messages, templates filled, and answers; the first number in its answer is the
score, clipped to the grader's ``range``.

The model is loaded once per Judges and kept (a grader names one model; a multi grader a few).
Generation is the one stack in tunesmith.generation: greedy unless ``sampling_params`` asks for a
temperature, the seed fixed, so the same answer grades the same every time.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from tunesmith.graders.schema import SamplingParams, ScoreModel
from tunesmith.graders.templates import render

DEFAULT_MAX_TOKENS = 32  # a score and a few words; OpenAI's graders answer in a short JSON
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass
class Judgement:
    score: float | None  # None: the answer has no number
    answer: str
    tokens: int  # prompt and answer tokens


def first_number(answer: str) -> float | None:
    match = _NUMBER.search(answer)
    return float(match.group()) if match else None


class Judges:
    """Loaded judge models by name; ``answer`` is what the score_model grader calls."""

    def __init__(self):
        self._loaded: dict[str, object] = {}
        self._lock = threading.Lock()  # one generation at a time: a model is not shared across threads

    def answer(self, model: str, messages: list[dict], params: SamplingParams) -> tuple[str, int]:
        from tunesmith.chat.messages import Message
        from tunesmith.data.tokenize import encode_chat
        from tunesmith.generation import generate
        from tunesmith.models import load_model

        with self._lock:
            loaded = self._loaded.get(model)
            if loaded is None:
                loaded = self._loaded[model] = load_model(model)
                loaded.model.eval()
            prompt = encode_chat(loaded.tokenizer, [Message(m["role"], m["content"]) for m in messages])
            out = generate(
                loaded.model,
                loaded.tokenizer,
                [prompt],
                max_new_tokens=params.max_completions_tokens or DEFAULT_MAX_TOKENS,
                batch_size=1,
                temperature=params.temperature or 0.0,
                top_p=params.top_p or 1.0,
                seed=params.seed or 0,
            )
        return out.texts[0], len(prompt) + out.new_tokens[0]


def judge(grader: ScoreModel, sample: dict, item: dict, judges: Judges) -> Judgement:
    """The clipped score (None for an answer without a number); TemplateError for a missing field."""
    # "developer" is OpenAI's newer name for the system turn; chat templates know "system".
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": render(m.text(), sample, item)}
        for m in grader.input
    ]
    answer, tokens = judges.answer(grader.model, messages, grader.sampling_params or SamplingParams())
    low, high = grader.range
    number = first_number(answer)
    return Judgement(None if number is None else min(max(number, low), high), answer, tokens)
