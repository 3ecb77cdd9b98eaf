"""`eval.task: graded`: answers to OpenAI reinforcement JSONL prompts scored by the run's grader (rl.grader).

The same grader that trained a GRPO run judges it: the base model zero-shot and the fine-tuned
model answer every test prompt (greedy unless eval.temperature), each answer gets the grader's
reward, and the report gives the mean score and, where the grader has a pass_threshold, the pass
rate, each with a bootstrap interval, and the fine-tune's paired gain over the base; for a multi
grader, each named grader's mean score as well.

Prompts are asked and answers read as GRPO's rollouts ask and read them: a line's tools offered,
its response_format enforced, tool calls parsed into ``sample.output_tools``.

Few-shot is not scored: reinforcement data holds prompts and grader fields, no answers to show
as examples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tunesmith.config import Config, EvalConfig
from tunesmith.errors import TunesmithError
from tunesmith.evaluate import metrics
from tunesmith.evaluate.variants import (
    empty_result,
    evaluate_variant,
    gains,
    generate_answers,
    model_folder,
    prepare_model,
    read_loss_curve,
    read_training_summary,
    write_result,
)
from tunesmith.graders import Context, Grader, answer_sample, grade_many
from tunesmith.graders.data import GradedPrompt, answer_grammar, prompt_ids, read_graded
from tunesmith.graders.load import load_grader
from tunesmith.models import load_model
from tunesmith.models.vocabulary import load_model_for
from tunesmith.precision import autocast, default_device

SIDE_BY_SIDE = 10


def mean_of(sums: np.ndarray) -> float:
    return float(sums[0] / sums[1]) if sums[1] else float("nan")


def score_stats(rewards: list[float]) -> metrics.ItemStats:
    """The mean grader score as sufficient statistics (reward, 1) per item, for bootstrap and paired gain."""
    return metrics.ItemStats(np.array([[r, 1.0] for r in rewards]).reshape(-1, 2), mean_of)


def load_graded_items(config: Config, grader: Grader) -> list[GradedPrompt]:
    if not config.data.test:
        raise TunesmithError("data.test is not set: `tunesmith eval` needs a held-out test file")
    loaded = read_graded(config.data.test, grader)
    if loaded.errors:
        raise TunesmithError(
            f"{config.data.test}: {len(loaded.errors)} invalid line(s), the first is {loaded.errors[0]}"
        )
    return loaded.examples[: config.eval.max_items]


def _scorer(grader: Grader, context: Context):
    def score(model, tokenizer, prompts, items: list[GradedPrompt], settings: EvalConfig) -> dict:
        grammars = _grammars(model, tokenizer, items)
        generation = generate_answers(model, tokenizer, prompts, settings, settings.max_new_tokens, grammars)
        samples = [answer_sample(text, bool(item.tools)) for text, item in zip(generation.texts, items, strict=True)]
        grades = grade_many(grader, samples, [item.item for item in items], context)
        scored = {"mean_score": score_stats([g.reward for g in grades])}
        # A multi grader's parts, each with its interval and paired gain: a reward that rose because
        # one part rose and another fell (coverage bought with length) shows as such.
        for name in getattr(grader, "graders", {}):
            scored[f"mean_score.{name}"] = score_stats([g.sub_rewards[name] for g in grades])
        if grader.pass_threshold is not None:
            scored["pass_rate"] = metrics.share_stats([bool(g.passed) for g in grades])
        return {"generation": generation, "metrics": scored, "outputs": generation.texts}

    return score


def _grammars(model, tokenizer, items: list[GradedPrompt]) -> list | None:
    if all(item.response_format is None for item in items):
        return None
    from tunesmith.constrained import compile_grammar

    grammars = [answer_grammar(item.response_format) for item in items]
    return [g if g is None else compile_grammar(tokenizer, model.config.vocab_size, g) for g in grammars]


def _variant(loaded, items: list[GradedPrompt], settings: EvalConfig, score, dtype: str) -> dict:
    model, tokenizer = prepare_model(loaded), loaded.tokenizer
    prompts = [prompt_ids(tokenizer, item) for item in items]
    with autocast(dtype, default_device()):
        return evaluate_variant(model, tokenizer, prompts, items, settings, score)


def evaluate_graded(config: Config, run_dir: Path | None, out_dir: str) -> dict:
    """The base (zero-shot) and fine-tuned models on data.test's graded prompts; writes eval.json and reports."""
    grader = load_grader(config.rl.grader)
    items = load_graded_items(config, grader)
    score = _scorer(grader, Context())
    result = empty_result(config, "graded", run_dir, len(items), 0)
    result["variants"]["zero_shot"] = _variant(load_model_for(config), items, config.eval, score, config.train.dtype)
    result["notes"].append("few-shot skipped: reinforcement prompts have no answers to show as examples")
    if run_dir is None:
        result["notes"].append(f"no fine-tuned model in {config.out_dir}: base variants only")
    else:
        tuned = load_model(model_folder(run_dir))
        result["variants"]["finetuned"] = _variant(tuned, items, config.eval, score, config.train.dtype)
        result["training"] = read_training_summary(run_dir)
        result["loss_curve"] = read_loss_curve(run_dir)
    result["samples"] = [
        {
            "input": "\n".join(m.content for m in item.messages if m.role == "user"),
            "references": [],
            **{name: v["outputs"][i] for name, v in result["variants"].items()},
        }
        for i, item in enumerate(items[:SIDE_BY_SIDE])
    ]
    result["gain"] = gains(result["variants"], config.eval, bases=("zero_shot",))
    return write_result(result, out_dir)
