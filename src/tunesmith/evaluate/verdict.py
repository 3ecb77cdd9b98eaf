"""The verdict: what the measured numbers say about fine-tuning, in plain words.

Three questions, each answered only from numbers already in the result:

* quality: the fine-tune against the best alternative (the best of zero-shot, few-shot and, with
  eval.rag, the base model with retrieved passages, or the encoder task's baselines) on the task's
  main metric, the first one the task reports (accuracy, BLEU, perplexity, ...). The paired
  interval decides: entirely on the better side is a win, straddling 0 a tie, entirely on the
  worse side a loss. A tie means the cheaper option, the one that needs no training, suffices.
  Retrieval is weighed on its own too: a fine-tune that beats the best alternative but not
  retrieval (its paired interval against retrieval includes 0) ties with retrieval;
* forgetting: the relative rise of general-text perplexity from base to fine-tune
  (eval.general_text), when measured;
* break-even: a request's time is its generated tokens over the variant's measured tokens/s (the
  generation timing includes reading the prompt, so the alternative's longer few-shot prompts show
  up as fewer tokens/s). Training pays back after training seconds / seconds saved per request.
  A fine-tuned request that reads and writes no fewer tokens than the alternative saves nothing:
  the same model doing the same work, so a difference in measured tokens/s is the machine's load.
"""

from __future__ import annotations

import math

from tunesmith.evaluate.metrics import LOWER_IS_BETTER

TITLES = {
    "zero_shot": "zero-shot prompting",
    "few_shot": "few-shot prompting",
    "bm25": "BM25",
    "base_rag": "retrieval (the base model with retrieved passages)",
    "finetuned_rag": "the fine-tune with retrieved passages",
}


def _title(variant: str) -> str:
    return TITLES.get(variant, variant.replace("_", " "))


def _known(*values) -> bool:
    return all(v is not None and not (isinstance(v, float) and math.isnan(v)) for v in values)


def _interval(gain: dict) -> str:
    return f"{gain['value']:+.2f} [{gain['low']:+.2f}, {gain['high']:+.2f}]"


def _quality(metric: str, gain: dict) -> tuple[str, str]:
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    low, high = sorted((sign * gain["low"], sign * gain["high"]))
    interval = _interval(gain)
    other = _title(gain["baseline"])
    if low > 0:
        return (
            "better",
            f"The fine-tune beats {other} on {metric}: {interval}, the interval is on the better side of 0.",
        )
    if high < 0:
        return "worse", f"The fine-tune is worse than {other} on {metric}: {interval}; use {other} instead."
    return "tie", (
        f"The fine-tune is not measurably better than {other} on {metric}: {interval}, the interval "
        f"includes 0, so the cheaper option, {other}, suffices."
    )


def _forgetting(forgetting: dict) -> dict | None:
    base, tuned = forgetting.get("base"), forgetting.get("finetuned")
    if not (base and tuned and _known(base["value"], tuned["value"])) or base["value"] <= 0:
        return None
    rise = tuned["value"] / base["value"] - 1.0
    return {"base": base["value"], "finetuned": tuned["value"], "relative_rise": rise}


def _seconds_per_request(cost: dict) -> float | None:
    generated, speed = cost.get("generated_tokens"), cost.get("tokens_per_second")
    return generated / speed if _known(generated, speed) and speed > 0 else None


def _break_even(variants: dict, baseline: str, training: dict | None) -> dict | None:
    tuned_cost, other_cost = variants["finetuned"]["cost"], variants[baseline]["cost"]
    tuned, other = _seconds_per_request(tuned_cost), _seconds_per_request(other_cost)
    seconds = (training or {}).get("wall_seconds")
    if not _known(tuned, other, seconds):
        return None
    fewer_tokens = any(tuned_cost[key] < other_cost[key] for key in ("prompt_tokens", "generated_tokens"))
    saved = other - tuned if fewer_tokens else 0.0
    return {
        "seconds_per_request": {"finetuned": tuned, baseline: other},
        "prompt_tokens": {"finetuned": tuned_cost["prompt_tokens"], baseline: other_cost["prompt_tokens"]},
        "fewer_tokens": fewer_tokens,
        "seconds_saved_per_request": saved,
        "training_seconds": seconds,
        "requests": math.ceil(seconds / saved) if saved > 0 else None,
    }


def _retrieval(metric: str, rag_gain: dict) -> str:
    """What retrieval added, on the main metric."""
    base = rag_gain["base_rag"][metric]
    said = f"Retrieval: the base model with retrieved passages against {_title(base['baseline'])}: {_interval(base)}"
    tuned = (rag_gain.get("finetuned_rag") or {}).get(metric)
    if tuned:
        said += f"; the fine-tune with retrieved passages against {_title(tuned['baseline'])}: {_interval(tuned)}"
    return said + f" on {metric}."


def verdict(result: dict) -> dict:
    """The verdict entry of eval.json: outcome, forgetting, break-even, and the sentences saying so."""
    gains, variants = result.get("gain") or {}, result.get("variants", {})
    if not gains or "finetuned" not in variants:
        return {"outcome": None, "sentences": ["No verdict: no fine-tuned model was evaluated."]}
    metric = next(iter(gains))
    gain = gains[metric]
    outcome, said = _quality(metric, gain)
    rag_gain = result.get("rag_gain") or {}
    against_retrieval = (rag_gain.get("finetuned") or {}).get(metric)
    if outcome == "better" and against_retrieval and _quality(metric, against_retrieval)[0] == "tie":
        # Retrieval is within the fine-tune's interval: it suffices, though another alternative scored higher.
        gain = against_retrieval
        outcome, said = _quality(metric, gain)
    sentences = [said]
    forgetting = _forgetting(result.get("forgetting") or {})
    if forgetting:
        change = "rose" if forgetting["relative_rise"] >= 0 else "fell"
        sentences.append(
            f"General ability: perplexity on general text {change} by {abs(forgetting['relative_rise']):.1%} "
            f"({forgetting['base']:.2f} for the base, {forgetting['finetuned']:.2f} for the fine-tune)."
        )
    else:
        sentences.append("General ability: not measured (set eval.general_text to measure forgetting).")
    break_even = _break_even(variants, gain["baseline"], result.get("training"))
    other = _title(gain["baseline"])
    if break_even is None:
        sentences.append("Break-even: unknown (needs generation tokens/s of both variants and the training time).")
    elif not break_even["fewer_tokens"]:
        sentences.append(
            f"Break-even: never; a fine-tuned request reads and writes no fewer tokens than {other}, "
            "so it saves no time."
        )
    elif break_even["requests"] is None:
        sentences.append(f"Break-even: never; a fine-tuned request is not faster than {other}.")
    else:
        sentences.append(
            f"Break-even: after {break_even['requests']:,} requests the time saved per request "
            f"({break_even['seconds_saved_per_request']:.4f} s against {other}) pays back the "
            f"{break_even['training_seconds']:.0f} s of training."
        )
    if rag_gain.get("base_rag", {}).get(metric):
        sentences.append(_retrieval(metric, rag_gain))
    return {
        "metric": metric,
        "baseline": gain["baseline"],
        "outcome": outcome,
        "forgetting": forgetting,
        "break_even": break_even,
        "sentences": sentences,
    }
