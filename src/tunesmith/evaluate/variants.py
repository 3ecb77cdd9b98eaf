"""What every evaluation shares, whatever its task: the model prepared for answering, a variant
scored with intervals, the paired gain of the fine-tune, the run folder's summary and loss curve,
and eval.json with its reports. run.py (generation, classification, text), tool_eval.py (tool
calls) and encoders.py score their tasks through these.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.config import Config, EvalConfig
from tunesmith.errors import TunesmithError
from tunesmith.evaluate import metrics
from tunesmith.generation import generate
from tunesmith.paths import write_text_atomic
from tunesmith.runfolder import MERGED, METRICS, read_metrics, read_summary


def prepare_model(loaded):
    import torch

    model = loaded.model.to("cuda") if torch.cuda.is_available() else loaded.model
    model.eval()
    return model


def bootstrap_ci(stats: metrics.ItemStats, settings: EvalConfig) -> dict[str, float]:
    return metrics.bootstrap(stats, settings.bootstrap_resamples, settings.seed).as_dict()


def generate_answers(model, tokenizer, prompts, settings: EvalConfig, max_new_tokens: int, grammars=None):
    return generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=settings.batch_size,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=settings.seed,
        grammars=grammars,
    )


def evaluate_variant(model, tokenizer, prompts, items, settings: EvalConfig, scorer) -> dict:
    """One variant's answers to `prompts` scored by `scorer` (run.SCORERS, or tool_eval's): metrics with
    intervals, cost (prompt and generated tokens, tokens/s), outputs, and the per-item statistics."""
    scored = scorer(model, tokenizer, prompts, items, settings)
    generation = scored["generation"]
    cost = {
        "prompt_tokens": sum(len(p) for p in prompts) / len(prompts),
        "generated_tokens": sum(generation.new_tokens) / len(prompts) if generation else None,
        "tokens_per_second": generation.tokens_per_second if generation else None,
    }
    return {
        "metrics": {name: bootstrap_ci(stats, settings) for name, stats in scored["metrics"].items()},
        "cost": cost,
        "outputs": scored["outputs"],
        "stats": scored["metrics"],  # per-item statistics, for the paired gain; not written out
    }


def gains(
    variants: dict, settings: EvalConfig, bases: tuple[str, ...] = ("zero_shot", "few_shot"), tuned: str = "finetuned"
) -> dict:
    """The `tuned` variant minus the better of the `bases` variants, per metric, with a paired bootstrap interval."""
    if tuned not in variants:
        return {}
    out = {}
    for name, stats in variants[tuned]["stats"].items():
        sign = -1.0 if name in metrics.LOWER_IS_BETTER else 1.0
        best = max([v for v in bases if v in variants], key=lambda v: sign * variants[v]["metrics"][name]["value"])
        diff = metrics.paired_difference(
            stats, variants[best]["stats"][name], settings.bootstrap_resamples, settings.seed
        ).as_dict()
        out[name] = {"baseline": best, **diff}
    return out


def run_folder(finetuned: str | None, config: Config) -> Path | None:
    """The fine-tuned run folder: the one given (must exist), else config.out_dir if it has a model."""
    if finetuned is None:
        default = Path(config.out_dir)
        return default if (default / MERGED / "config.json").is_file() else None
    path = Path(finetuned)
    if path.name == MERGED and (path / "config.json").is_file():
        return path.parent
    if not ((path / MERGED / "config.json").is_file() or (path / "config.json").is_file()):
        raise TunesmithError(
            f"fine-tuned model not found: {finetuned} is not a run folder with merged/ "
            "nor a Hugging Face model folder; train first or pass --finetuned DIR"
        )
    return path


def model_folder(run_dir: Path) -> str:
    return str(run_dir / MERGED) if (run_dir / MERGED / "config.json").is_file() else str(run_dir)


def read_training_summary(run_dir: Path) -> dict | None:
    summary = read_summary(run_dir)
    if summary is None:
        return None
    return {key: summary.get(key) for key in ("trained_tokens", "wall_seconds", "steps")}


def read_loss_curve(run_dir: Path) -> dict | None:
    """[[step, loss], ...] for train and validation loss from the trainer's metrics.jsonl."""
    if not (run_dir / METRICS).is_file():
        return None
    curve = {"train": [], "val": []}
    for row in read_metrics(run_dir):
        for key, name in (("train_loss", "train"), ("val_loss", "val")):
            if row.get(key) is not None:
                curve[name].append([row["step"], row[key]])
    return curve


def empty_result(config: Config, task: str, run_dir: Path | None, items: int, references: int) -> dict:
    """eval.json before any variant is scored: what was evaluated, on what, with which intervals."""
    settings = config.eval
    return {
        "task": task,
        "model": config.model,
        "finetuned": str(run_dir) if run_dir else None,
        "test_file": config.data.test,
        "items": items,
        "references": references,
        "confidence": {"level": metrics.CONFIDENCE, "resamples": settings.bootstrap_resamples, "seed": settings.seed},
        "variants": {},
        "few_shot": None,
        "forgetting": {},
        "training": None,
        "loss_curve": None,
        "notes": [],
    }


def write_result(result: dict, out_dir: str) -> dict:
    """eval.json, report.html and report.md, with the verdict and without the per-item outputs and statistics."""
    from tunesmith.evaluate.report import write_reports
    from tunesmith.evaluate.verdict import verdict

    result["verdict"] = verdict(result)

    for variant in result["variants"].values():
        del variant["outputs"], variant["stats"]
    target = Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target / "eval.json", json.dumps(result, indent=2) + "\n")
    write_reports(result, target)
    return result
