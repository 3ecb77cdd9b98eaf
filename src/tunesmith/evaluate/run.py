"""`tunesmith eval`: the same held-out items through every variant, with cost next to quality.

Variants: the base model zero-shot, the base model few-shot (training examples as earlier chat
turns), and the fine-tuned model zero-shot; with ``eval.rag``, also the base and the fine-tuned
model with retrieved passages in the prompt (evaluate/rag.py), retrieved once for both. Metrics
depend on ``eval.task``:

* generation: corpus BLEU and chrF, ROUGE-L and exact match, each against all references of an
  item (test lines with the same prompt are one item with several references);
* qa: short answers to questions: the share of answers that contain a reference as whole words,
  and exact match, both after SQuAD's normalisation (metrics.normalise_answer); references grouped
  as for generation. Contains comes first (the verdict's metric): a model that answers in a
  sentence knows the fact as well as one that answers in a word;
* classification: the prediction is the label whose tokens (followed by the end-of-turn token,
  so a label that is the prefix of another cannot win by stopping early) have the highest
  *mean* log-prob per token under the model. Mean rather than sum, so multi-token labels are not
  penalised for their length. Also the parse rate: the share of greedy generations that are
  exactly a label after stripping whitespace;
* text: perplexity of the reference answer (or of raw text) given the prompt.

The fine-tuned run folder is read for ``summary.json`` (trained_tokens, wall_seconds, steps) and
``metrics.jsonl`` (loss curves); both are optional.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, replace
from pathlib import Path

from tunesmith.chat.tools import Tool
from tunesmith.config import Config, EvalConfig
from tunesmith.data.formats import Message, read_examples, split_prompt, with_system
from tunesmith.data.tokenize import encode_chat, text_start
from tunesmith.encoders.data import read_passages
from tunesmith.errors import TunesmithError
from tunesmith.evaluate import metrics
from tunesmith.evaluate.baselines import (
    FEW_SHOT_OFF,
    MAX_AUTO_SHOTS,
    FewShotSelector,
    context_budget,
    demonstrations,
    few_shot_prompt,
)
from tunesmith.evaluate.loglikelihood import continuation_logprobs, label_logprobs
from tunesmith.evaluate.rag import Retrieved, describe, question, retrieve, with_context
from tunesmith.evaluate.variants import (
    bootstrap_ci,
    empty_result,
    evaluate_variant,
    gains,
    generate_answers,
    model_folder,
    prepare_model,
    read_loss_curve,
    read_training_summary,
    run_folder,
    write_result,
)
from tunesmith.models import load_model, load_tokenizer, resolve_model_path
from tunesmith.models.vocabulary import load_model_for, load_tokenizer_for
from tunesmith.precision import autocast, default_device

VARIANTS = ("zero_shot", "few_shot", "base_rag", "finetuned", "finetuned_rag")
RAG_VARIANTS = ("base_rag", "finetuned_rag")  # only with eval.rag
# The alternatives to fine-tuning that need no training: the fine-tune's gain is over the best of them.
UNTRAINED = ("zero_shot", "few_shot", "base_rag")
SIDE_BY_SIDE = 10
# A valid label is at most its own tokens plus a few whitespace tokens around it, so longer free
# generations cannot parse and need not be produced.
LABEL_SLACK_TOKENS = 4


@dataclass(frozen=True)
class TestItem:
    prompt: tuple[Message, ...]  # the chat before the answer; empty for raw text
    references: tuple[str, ...]  # answers, or the raw text itself
    line: int
    tools: tuple[Tool, ...] = ()  # the example's tools: its prompt offers them, as in training
    parallel_tool_calls: bool = True


def load_test_items(config: Config) -> list[TestItem]:
    """Test items in file order; generation groups lines with an identical prompt into one item."""
    path, task = config.data.test, config.eval.task
    if not path:
        raise TunesmithError("data.test is not set: `tunesmith eval` needs a held-out test file")
    loaded = read_examples(path, config.data.format, config.data.columns)
    errors = [e for e in loaded.errors if e.severity == "error"]
    if errors:
        raise TunesmithError(
            f"{path}: {len(errors)} invalid line(s), the first is {errors[0]}; see `tunesmith validate`"
        )
    items: dict[object, TestItem] = {}
    for n, example in enumerate(loaded.examples):
        if example.text is not None:
            if task != "text":
                raise TunesmithError(
                    f"{path}: raw text has no answers to score for eval.task={task}; "
                    "use prompt/completion or messages data, or eval.task=text"
                )
            items[n] = TestItem((), (example.text,), example.line)
            continue
        split = split_prompt(example.messages)
        if split is None:
            raise TunesmithError(f"{path}:{example.line}: no assistant answer to evaluate against")
        prompt, answer = split
        key = prompt if task in ("generation", "qa") else n
        if key in items:
            items[key] = replace(items[key], references=(*items[key].references, answer))
        else:
            items[key] = TestItem(prompt, (answer,), example.line, example.tools, example.parallel_tool_calls)
    result = list(items.values())[: config.eval.max_items]
    if task == "classification":
        _check_labels(result, config.eval, path)
    return result


def _check_labels(items: list[TestItem], settings: EvalConfig, path: str) -> None:
    if not settings.labels:
        raise TunesmithError("eval.task=classification needs eval.labels (the label set)")
    unknown = [(item.line, item.references[0]) for item in items if item.references[0] not in settings.labels]
    if unknown:
        line, label = unknown[0]
        raise TunesmithError(
            f"{path}:{line}: answer {label!r} is not one of eval.labels ({', '.join(settings.labels)}); "
            f"{len(unknown)} test item(s) have such answers"
        )


def _answer_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def _generated(model, tokenizer, prompts, items, settings: EvalConfig, table: dict) -> dict:
    """Greedy (or sampled) answers scored against each item's references by every metric of `table`."""
    out = generate_answers(model, tokenizer, prompts, settings, settings.max_new_tokens)
    refs = [item.references for item in items]
    scored = {name: stats(out.texts, refs) for name, stats in table.items()}
    return {"metrics": scored, "outputs": out.texts, "generation": out}


def _score_generation(model, tokenizer, prompts, items, settings: EvalConfig) -> dict:
    table = {
        "bleu": metrics.bleu_stats,
        "rouge_l": metrics.rouge_l_stats,
        "chrf": metrics.chrf_stats,
        "exact_match": metrics.exact_match_stats,
    }
    return _generated(model, tokenizer, prompts, items, settings, table)


def _score_qa(model, tokenizer, prompts, items, settings: EvalConfig) -> dict:
    table = {"contains": metrics.contains_stats, "exact_match": metrics.normalised_exact_match_stats}
    return _generated(model, tokenizer, prompts, items, settings, table)


def _score_classification(model, tokenizer, prompts, items, settings: EvalConfig) -> dict:
    labels = settings.labels
    label_ids = [_answer_ids(tokenizer, label) for label in labels]
    scored = label_logprobs(model, tokenizer.pad_token_id, prompts, label_ids, settings.batch_size)
    predictions = []
    for per_label in scored:
        means = [total / count for total, count in per_label]
        predictions.append(labels[max(range(len(labels)), key=means.__getitem__)])
    longest = max(len(ids) for ids in label_ids) + LABEL_SLACK_TOKENS
    out = generate_answers(model, tokenizer, prompts, settings, min(settings.max_new_tokens, longest))
    gold = [item.references[0] for item in items]
    table = {
        "accuracy": metrics.accuracy_stats(predictions, gold),
        "macro_f1": metrics.macro_f1_stats(predictions, gold, labels),
        "parse_rate": metrics.parse_rate_stats(out.texts, labels),
    }
    outputs = [f"{p} (generated: {t.strip()!r})" for p, t in zip(predictions, out.texts, strict=True)]
    return {"metrics": table, "outputs": outputs, "generation": out}


def _perplexity(model, tokenizer, prompts, continuations, batch_size: int) -> metrics.ItemStats:
    scored = continuation_logprobs(model, tokenizer.pad_token_id, prompts, continuations, batch_size)
    return metrics.perplexity_stats([-total for total, _ in scored], [count for _, count in scored])


def _score_text(model, tokenizer, prompts, items, settings: EvalConfig) -> dict:
    conts = []
    for item in items:
        ids = _answer_ids(tokenizer, item.references[0])
        # Raw text has no prompt: its first token (the prompt built for it) conditions the rest.
        conts.append(ids if item.prompt else ids[1:])
    stats = _perplexity(model, tokenizer, prompts, conts, settings.batch_size)
    return {"metrics": {"perplexity": stats}, "outputs": ["" for _ in items], "generation": None}


SCORERS = {
    "generation": _score_generation,
    "qa": _score_qa,
    "classification": _score_classification,
    "text": _score_text,
}


def _prompt_ids(tokenizer, item: TestItem, system: str | None) -> list[int]:
    if not item.prompt:
        return tokenizer(item.references[0], add_special_tokens=False).input_ids[:1]
    return encode_chat(tokenizer, with_system(item.prompt, system), item.tools, item.parallel_tool_calls)


def _general_text_perplexity(model, tokenizer, path: str, window: int, settings: EvalConfig) -> dict:
    """Perplexity on general text in windows of ``window`` tokens; items = windows."""
    file = Path(path)
    if not file.is_file():
        raise TunesmithError(f"eval.general_text file not found: {path}")
    ids = tokenizer(file.read_text(encoding="utf-8"), add_special_tokens=False).input_ids
    if len(ids) < 2:
        raise TunesmithError(f"eval.general_text {path} has too little text to measure perplexity")
    windows = [ids[start : start + window] for start in range(0, len(ids) - 1, window)]
    windows = [w for w in windows if len(w) > 1]
    start = text_start(tokenizer)  # each window begins as pretraining began texts
    contexts = [start + w[:1] for w in windows]
    stats = _perplexity(model, tokenizer, contexts, [w[1:] for w in windows], settings.batch_size)
    return bootstrap_ci(stats, settings)


def _with_passages(items: list[TestItem], retrieved: list[Retrieved]) -> list[TestItem]:
    return [replace(item, prompt=with_context(item.prompt, r)) for item, r in zip(items, retrieved, strict=True)]


def _answer_all(model, tokenizer, items, config: Config, retrieved: list[Retrieved] | None, names: tuple[str, str]):
    """{names[0]: the items answered zero-shot, names[1]: with their retrieved passages (when there are)}."""

    def answer(asked: list[TestItem]) -> dict:
        prompts = [_prompt_ids(tokenizer, item, config.data.system) for item in asked]
        return evaluate_variant(model, tokenizer, prompts, items, config.eval, SCORERS[config.eval.task])

    out = {names[0]: answer(items)}
    if retrieved is not None:
        out[names[1]] = answer(_with_passages(items, retrieved))
    return out


def general_perplexity(config: Config, folder: str | None = None) -> dict:
    """General-text perplexity (eval.general_text, with its interval) of a model folder, or of the
    config's base model (with the tokens the config adds) when `folder` is None: the forgetting
    monitor's two ends, for a caller that scores nothing else."""
    loaded = load_model_for(config) if folder is None else load_model(folder)
    model = prepare_model(loaded)
    with autocast(config.train.dtype, default_device()):
        return _general_text_perplexity(
            model, loaded.tokenizer, config.eval.general_text, config.data.max_seq_len, config.eval
        )


def base_variants(
    config: Config, items: list[TestItem], result: dict, retrieved: list[Retrieved] | None = None
) -> None:
    """The base model zero-shot, few-shot and (with `retrieved`) with the retrieved passages."""
    settings = config.eval
    loaded = load_model_for(config)
    model, tokenizer = prepare_model(loaded), loaded.tokenizer
    answered = _answer_all(model, tokenizer, items, config, retrieved, ("zero_shot", "base_rag"))
    result["variants"]["zero_shot"] = answered["zero_shot"]

    if settings.few_shot_k == 0:
        result["notes"].append(FEW_SHOT_OFF)
    elif all(item.prompt for item in items):
        selector = FewShotSelector(
            demonstrations(read_examples(config.data.train, config.data.format, config.data.columns).examples),
            tokenizer,
            settings.few_shot_selection,
            settings.seed,
        )
        budget = context_budget(model, settings.max_new_tokens, settings.context_tokens)
        wanted = MAX_AUTO_SHOTS if settings.few_shot_k is None else settings.few_shot_k
        built = [
            few_shot_prompt(
                tokenizer,
                item.prompt,
                selector.ranked(item.prompt, i, wanted),
                config.data.system,
                budget,
                item.tools,
                item.parallel_tool_calls,
            )
            for i, item in enumerate(items)
        ]
        few = evaluate_variant(model, tokenizer, [b.ids for b in built], items, settings, SCORERS[settings.task])
        few["shots"] = sum(b.shots for b in built) / len(built)
        result["variants"]["few_shot"] = few
        result["few_shot"] = {"requested": settings.few_shot_k, "mean_shots": few["shots"], "budget": budget}
    else:
        result["notes"].append("few-shot skipped: raw-text test items have no prompt to put examples before")
    if "base_rag" in answered:
        result["variants"]["base_rag"] = answered["base_rag"]

    if settings.general_text:
        result["forgetting"]["base"] = _general_text_perplexity(
            model, tokenizer, settings.general_text, config.data.max_seq_len, settings
        )
    del model, loaded
    gc.collect()


def check_same_base(config: Config, tuned_folder: str) -> None:
    """Refuse a fine-tuned model of another architecture or vocabulary before any evaluation runs
    (the base's vocabulary with the tokens the config adds)."""
    from transformers import AutoConfig

    base_name, base_tokenizer = config.model, load_tokenizer_for(config.model, config.data, config.tokenizer)
    base_cfg, tuned_cfg = (AutoConfig.from_pretrained(resolve_model_path(n)) for n in (base_name, tuned_folder))
    base_cfg.vocab_size = max(base_cfg.vocab_size, len(base_tokenizer))
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
        ours, theirs = getattr(base_cfg, key, None), getattr(tuned_cfg, key, None)
        if ours != theirs:
            raise TunesmithError(
                f"fine-tuned model {tuned_folder} does not match base model {base_name!r}: {key} is "
                f"{theirs} there and {ours} in the base; set `model` to the base it was trained from"
            )
    if base_tokenizer.get_vocab() != load_tokenizer(tuned_folder).get_vocab():
        raise TunesmithError(
            f"fine-tuned model {tuned_folder} has a different tokenizer from base model {base_name!r}; "
            "set `model` to the base it was trained from"
        )


def _score_folder(
    config: Config, folder: str, items: list[TestItem], retrieved: list[Retrieved] | None
) -> tuple[dict, dict | None]:
    """{"finetuned": zero-shot, "finetuned_rag": with `retrieved`} of one model folder, and its
    general-text perplexity if configured."""
    settings = config.eval
    loaded = load_model(folder)
    model, tokenizer = prepare_model(loaded), loaded.tokenizer
    with autocast(config.train.dtype, default_device()):
        variants = _answer_all(model, tokenizer, items, config, retrieved, ("finetuned", "finetuned_rag"))
        forgetting = (
            _general_text_perplexity(model, tokenizer, settings.general_text, config.data.max_seq_len, settings)
            if settings.general_text
            else None
        )
    return variants, forgetting


def score_model(config: Config, folder: str, items: list[TestItem]) -> tuple[dict, dict | None]:
    """One model folder answering the items zero-shot (a variant), and its general-text perplexity if configured."""
    variants, forgetting = _score_folder(config, folder, items, None)
    return variants["finetuned"], forgetting


def _side_by_side(items: list[TestItem], variants: dict, retrieved: list[Retrieved] | None) -> list[dict]:
    rows = []
    for i, item in enumerate(items[:SIDE_BY_SIDE]):
        asked = "\n".join(m.content for m in item.prompt if m.role == "user")
        row = {"input": asked or item.references[0][:200], "references": list(item.references)}
        for name in VARIANTS:
            if name in variants or name not in RAG_VARIANTS:
                row[name] = variants[name]["outputs"][i] if name in variants else None
        if retrieved is not None:
            row["retrieved"] = list(retrieved[i].ids)
        rows.append(row)
    return rows


def _retrieve_for(config: Config, items: list[TestItem], passages) -> list[Retrieved]:
    if not all(item.prompt for item in items):
        raise TunesmithError(f"{config.data.test}: eval.rag needs questions to retrieve for; raw text has none")
    queries = [question(item.prompt) for item in items]
    return retrieve(config.eval.rag, passages, queries, config.eval.batch_size)


def _rag_gains(variants: dict, settings: EvalConfig) -> dict:
    """What retrieval is worth, as paired gains: the base with passages over the base without them; the
    fine-tune against retrieval alone (the verdict's "does retrieval suffice?"); and the fine-tune with
    passages over every other variant."""
    out = {"base_rag": gains(variants, settings, ("zero_shot", "few_shot"), tuned="base_rag")}
    if "finetuned" in variants:
        out["finetuned"] = gains(variants, settings, ("base_rag",))
        others = tuple(v for v in variants if v != "finetuned_rag")
        out["finetuned_rag"] = gains(variants, settings, others, tuned="finetuned_rag")
    return out


def run_evaluation(config: Config, finetuned: str | None, out_dir: str) -> dict:
    """Evaluate every variant on the test items; write eval.json, report.html, report.md to out_dir."""
    settings = config.eval
    pairs = settings.task == "preference"  # held-out pairs, not items to answer: evaluate/preference.py
    tools = settings.task == "tool_calls"  # items with tools and acceptable calls: evaluate/tool_eval.py
    graded = settings.task == "graded"  # prompts scored by rl.grader: evaluate/graded.py
    items = [] if pairs or tools or graded else load_test_items(config)
    passages = read_passages(settings.rag.corpus) if settings.rag else None  # before any model loads
    run_dir = run_folder(finetuned, config)
    if run_dir is not None:
        check_same_base(config, model_folder(run_dir))
    if graded:
        from tunesmith.evaluate.graded import evaluate_graded

        return evaluate_graded(config, run_dir, out_dir)
    if tools:
        from tunesmith.evaluate.tool_eval import evaluate_tool_calls

        return evaluate_tool_calls(config, run_dir, out_dir)
    if pairs:
        from tunesmith.evaluate.preference import evaluate_preferences

        tuned, training = (model_folder(run_dir), read_training_summary(run_dir)) if run_dir else (None, None)
        return evaluate_preferences(config, tuned, out_dir, training)
    result = empty_result(config, settings.task, run_dir, len(items), sum(len(item.references) for item in items))
    retrieved = _retrieve_for(config, items, passages) if passages is not None else None
    if retrieved is not None:
        result["rag"] = describe(settings.rag, passages, retrieved)
    # Same precision policy as training: bf16 matmuls where the hardware has them.
    with autocast(config.train.dtype, default_device()):
        base_variants(config, items, result, retrieved)

    if run_dir is None:
        result["notes"].append(f"no fine-tuned model in {config.out_dir}: base variants only")
    else:
        tuned, forgetting = _score_folder(config, model_folder(run_dir), items, retrieved)
        result["variants"].update(tuned)
        if forgetting:
            result["forgetting"]["finetuned"] = forgetting
        result["training"] = read_training_summary(run_dir)
        result["loss_curve"] = read_loss_curve(run_dir)

    result["samples"] = _side_by_side(items, result["variants"], retrieved)
    result["gain"] = gains(result["variants"], settings, UNTRAINED)
    if retrieved is not None:
        result["rag_gain"] = _rag_gains(result["variants"], settings)
    return write_result(result, out_dir)


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def format_summary(result: dict) -> str:
    """A compact terminal table: one row per variant, value [low, high] per metric, then cost."""
    if result["task"] == "preference":
        from tunesmith.evaluate.preference import format_preferences

        return format_preferences(result)
    variants = result["variants"]
    names = list(next(iter(variants.values()))["metrics"]) if variants else []
    header = ["variant", *names, "prompt tok", "tok/s"]
    rows = [header]
    for variant, data in variants.items():
        cells = [variant]
        for name in names:
            m = data["metrics"][name]
            cells.append(f"{_number(m['value'])} [{_number(m['low'])}, {_number(m['high'])}]")
        cells += [_number(data["cost"]["prompt_tokens"], 0), _number(data["cost"]["tokens_per_second"], 0)]
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    gains_by_variant = [("fine-tuned", result.get("gain", {})), ("hybrid_finetuned", result.get("hybrid_gain", {}))]
    gains_by_variant += list(result.get("rag_gain", {}).items())
    extra = [
        f"{who} vs {g['baseline']}: {name} {g['value']:+.2f} [{g['low']:+.2f}, {g['high']:+.2f}]"
        for who, by_metric in gains_by_variant
        for name, g in by_metric.items()
    ]
    if result.get("forgetting"):
        extra.append(
            "general-text perplexity: "
            + ", ".join(f"{k} {_number(v['value'], 2)}" for k, v in result["forgetting"].items())
        )
    if result.get("training"):
        t = result["training"]
        extra.append(f"fine-tune: {t['trained_tokens']} tokens, {t['steps']} steps, {_number(t['wall_seconds'])} s")
    extra += result.get("notes", [])
    extra += (result.get("verdict") or {}).get("sentences", [])
    return "\n".join(lines + extra)
