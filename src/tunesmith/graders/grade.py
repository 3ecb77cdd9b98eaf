"""Running a grader on model samples: one reward per (sample, item), never an exception.

A grader that fails on one sample (a field the item lacks, a crashing python grader, a judge that
answers without a number, a formula dividing by zero) gives that sample a reward of 0 and says why
in ``errors`` (OpenAI's flags) and ``messages`` (the sentences); the caller's job goes on.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tunesmith.chat.tools import parse_tool_calls
from tunesmith.graders import formula, sandbox, similarity
from tunesmith.graders.judge import Judges, judge
from tunesmith.graders.schema import Grader, Multi, Python, ScoreModel, StringCheck, TextSimilarity
from tunesmith.graders.templates import TemplateError, render

# OpenAI's metadata.errors flags, all false on a clean run.
ERROR_FLAGS = (
    "formula_parse_error",
    "invalid_variable_error",
    "model_grader_parse_error",
    "model_grader_refusal_error",
    "model_grader_server_error",
    "other_error",
    "python_grader_runtime_error",
    "python_grader_server_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
)
DEFAULT_ENCODER = "minilm-l6"


def make_sample(output_text: str, output_tools: list | None = None) -> dict:
    """The ``sample`` namespace for a model's answer: ``output_json`` is the answer parsed as JSON
    when it is JSON (else None), ``choices`` the one choice in Chat Completions' shape."""
    try:
        output_json = json.loads(output_text)
    except ValueError:
        output_json = None
    message = {"role": "assistant", "content": output_text}
    if output_tools:
        message["tool_calls"] = output_tools
    return {
        "output_text": output_text,
        "output_json": output_json,
        "output_tools": output_tools or [],
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if output_tools else "stop"}],
    }


def answer_sample(text: str, tools_offered: bool) -> dict:
    """The sample of a generated answer. Where tools were offered, its ``<tool_call>`` blocks are
    read as the service reads them (chat.tools.parse_tool_calls): ``output_tools`` holds the calls
    in OpenAI's form, ids numbered in order, and ``output_text`` the text around them."""
    if not tools_offered:
        return make_sample(text)
    content, calls = parse_tool_calls(text)
    return make_sample(content, [{"id": f"call_{i}", **call.openai()} for i, call in enumerate(calls)])


@dataclass
class Context:
    """What graders share across samples: sandbox limits, parallelism, loaded encoders and judges."""

    limits: sandbox.Limits = field(default_factory=sandbox.Limits)
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    encoder: str = DEFAULT_ENCODER  # the cosine metric's sentence encoder
    judges: Judges = field(default_factory=Judges)
    _encoders: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def encode(self, texts: list[str]):
        with self._lock:  # one load, and one encoding at a time: samples are graded from a thread pool
            if self.encoder not in self._encoders:
                from tunesmith.encoders.model import load_encoder

                self._encoders[self.encoder] = load_encoder(self.encoder)
            return self._encoders[self.encoder].encode(texts)


@dataclass
class Grade:
    reward: float
    name: str
    type: str
    passed: bool | None = None  # None: the grader has no pass_threshold
    sub_rewards: dict[str, float] = field(default_factory=dict)
    errors: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(ERROR_FLAGS, False))
    details: dict[str, str] = field(default_factory=dict)  # e.g. python_grader_runtime_error_details
    messages: list[str] = field(default_factory=list)
    seconds: float = 0.0
    token_usage: int | None = None
    tokens_per_model: dict[str, int] = field(default_factory=dict)  # score_model judges: prompt + answer tokens

    def fail(self, flag: str, message: str, detail: str | None = None) -> Grade:
        self.reward = 0.0
        self.errors[flag] = True
        self.messages.append(message)
        if detail:
            self.details[detail] = message
        return self

    def metadata(self) -> dict:
        """OpenAI's ``metadata`` of a grader run."""
        errors = {**self.errors, **self.details}
        errors.setdefault("python_grader_runtime_error_details", None)
        errors.setdefault("python_grader_server_error_type", None)
        errors.setdefault("model_grader_server_error_details", None)
        return {
            "name": self.name,
            "type": self.type,
            "errors": {**errors, "messages": self.messages},
            "execution_time": self.seconds,
            "scores": {self.name: self.reward, **self.sub_rewards},
            "token_usage": self.token_usage,
            "sampled_model_name": None,
        }


def _string_check(grader: StringCheck, text: str, reference: str) -> float:
    if grader.operation == "eq":
        return float(text == reference)
    if grader.operation == "ne":
        return float(text != reference)
    if grader.operation == "like":
        return float(reference in text)
    return float(reference.lower() in text.lower())


def _leaf(grader: Grader, sample: dict, item: dict, context: Context, result: Grade) -> Grade:
    """``result`` with the reward of a grader that is not ``multi``."""
    try:
        if isinstance(grader, (StringCheck, TextSimilarity)):
            text, reference = render(grader.input, sample, item), render(grader.reference, sample, item)
            if isinstance(grader, StringCheck):
                result.reward = _string_check(grader, text, reference)
            else:
                score = similarity.metric(grader.evaluation_metric, context.encode)(text, reference)
                result.reward = min(max(score, 0.0), 1.0)  # float error (1.0000000000000004), negative cosines
        elif isinstance(grader, Python):
            return _python(sandbox.run(grader.source, sample, item, context.limits), result)
        elif isinstance(grader, ScoreModel):
            judgement = judge(grader, sample, item, context.judges)
            result.token_usage, result.tokens_per_model = judgement.tokens, {grader.model: judgement.tokens}
            if judgement.score is None:
                return result.fail(
                    "model_grader_parse_error", f"the grader model's answer has no number: {judgement.answer[:200]!r}"
                )
            result.reward = judgement.score
    except TemplateError as error:
        # A reference into output_json of an answer that is not JSON: the sample is at fault, not the grader.
        unparsed = error.reference[:2] == ("sample", "output_json") and sample.get("output_json") is None
        return result.fail("sample_parse_error" if unparsed else "invalid_variable_error", str(error))
    except Exception as error:  # a model that fails to load or run: this sample's reward is 0, not the job
        return result.fail(
            "model_grader_server_error" if isinstance(grader, ScoreModel) else "other_error",
            f"{type(error).__name__}: {error}",
            "model_grader_server_error_details" if isinstance(grader, ScoreModel) else None,
        )
    return result


def _python(outcome: sandbox.Outcome, result: Grade) -> Grade:
    if outcome.kind is None:
        result.reward = outcome.score
        return result
    if outcome.kind == "timeout":
        result.fail("unresponsive_reward_error", outcome.error, "python_grader_runtime_error_details")
        result.errors["python_grader_runtime_error"] = True
        return result
    if outcome.kind == "server":
        result.details["python_grader_server_error_type"] = "process"
        return result.fail("python_grader_server_error", outcome.error)
    return result.fail("python_grader_runtime_error", outcome.error, "python_grader_runtime_error_details")


def grade(grader: Grader, sample: dict, item: dict, context: Context | None = None) -> Grade:
    """``grader``'s reward for one ``sample`` (make_sample) of one dataset ``item``."""
    context = context or Context()
    start = time.perf_counter()
    result = Grade(0.0, grader.name, grader.type)
    if isinstance(grader, Multi):
        values = {}
        for key, sub in grader.graders.items():
            part = grade(sub, sample, item, context)
            values[key] = result.sub_rewards[key] = part.reward
            result.messages += [f"{key}: {m}" for m in part.messages]
            result.errors = {k: v or part.errors.get(k, False) for k, v in result.errors.items()}
            result.details.update(part.details)
            if part.token_usage:
                result.token_usage = (result.token_usage or 0) + part.token_usage
            for model, tokens in part.tokens_per_model.items():
                result.tokens_per_model[model] = result.tokens_per_model.get(model, 0) + tokens
        try:
            result.reward = formula.evaluate(grader.calculate_output, values)
        except formula.FormulaValueError as error:
            result.fail("other_error", str(error))
    else:
        _leaf(grader, sample, item, context, result)
    if grader.pass_threshold is not None:
        result.passed = result.reward >= grader.pass_threshold
    result.seconds = time.perf_counter() - start
    return result


def _has_model(grader: Grader) -> bool:
    return isinstance(grader, ScoreModel) or isinstance(grader, Multi) and any(map(_has_model, grader.graders.values()))


def grade_many(grader: Grader, samples: list[dict], items: list[dict], context: Context | None = None) -> list[Grade]:
    """``grade`` of each (sample, item), in order; python graders run ``context.workers`` at a time
    (each in its own process), a judge model one sample at a time."""
    context = context or Context()
    workers = 1 if _has_model(grader) else max(1, min(context.workers, len(samples)))
    with ThreadPoolExecutor(workers, thread_name_prefix="tunesmith-grade") as pool:
        return list(pool.map(lambda pair: grade(grader, pair[0], pair[1], context), zip(samples, items, strict=True)))
