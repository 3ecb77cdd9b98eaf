"""One trial of `tunesmith tune`: train with the trial's values, score the model on the validation
split, measure forgetting.

The score is an eval.task metric (evaluate/run.py's scorers) on data.validation's items; for a
contrastive encoder, a retrieval metric of the validation queries (the BEIR folder's qrels/dev.tsv)
ranking the whole corpus, as `tunesmith eval` ranks the test queries; for DPO and an encoder
classifier and GRPO, a metric the training loop measures on its validation split (reward accuracy,
accuracy, the grader's mean reward), read at the step whose weights the run keeps; else the best
validation loss (encoder MLM, tool calls). Forgetting is the relative rise of general-text
perplexity (eval.general_text) over the base model's, as `tunesmith eval`'s forgetting monitor
measures it. A trial's config has no data.test: the test split is kept for the one evaluation of
the chosen config.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import Config, config_from_dict
from tunesmith.encoders.recipe import is_encoder_run
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.metrics import LOWER_IS_BETTER
from tunesmith.runfolder import VAL, VAL_LOSS, metric_name, read_metrics
from tunesmith.tune.space import apply_values

# The metrics each task's scorer returns (evaluate/run.py's SCORERS), the first the default.
TASK_METRICS = {
    "generation": ("bleu", "rouge_l", "chrf", "exact_match"),
    "qa": ("contains", "exact_match"),
    "classification": ("accuracy", "macro_f1", "parse_rate"),
    "text": ("perplexity",),
}
RETRIEVAL_METRICS = ("ndcg@10", "mrr@10", "recall@100")
# A trial writes no resumable checkpoints: a trial cut short is run again from its start.
NO_CHECKPOINTS = 10**9


@dataclass(frozen=True)
class Goal:
    """What a trial is scored on, which way is better, and the forgetting budget."""

    metric: str
    direction: str  # "maximize" or "minimize"
    max_forgetting: float | None
    measures_forgetting: bool

    in_loop: bool = False  # the metric is one the training loop measures at each evaluation

    def intermediate(self, validation: dict) -> float:
        """What the study compares at an evaluation step: the goal's metric where the loop measures it,
        else the validation loss, negated when the study maximises (a higher loss always reads as worse)."""
        if self.in_loop:
            return validation[metric_name(VAL, self.metric)]
        return -validation[VAL_LOSS] if self.direction == "maximize" else validation[VAL_LOSS]


def resolve_goal(cfg: Config) -> Goal:
    loop_metrics = _loop_metrics(cfg)
    task_metrics = loop_metrics or (
        _encoder_metrics(cfg) if is_encoder_run(cfg) else TASK_METRICS.get(cfg.eval.task, ())
    )
    metric = cfg.tune.metric or (task_metrics[0] if task_metrics else VAL_LOSS)
    if metric != VAL_LOSS and metric not in task_metrics:
        choices = ", ".join((*task_metrics, VAL_LOSS))
        raise TunesmithError(
            f"tune.metric {metric!r} is not scored for this run's eval.task={cfg.eval.task}: choose {choices}"
        )
    if metric not in (VAL_LOSS, *loop_metrics) and not cfg.data.validation:
        raise TunesmithError(
            f"tune scores {metric} on data.validation: set it to a held-out file (the search never reads data.test), "
            f"or tune.metric={VAL_LOSS}"
        )
    direction = cfg.tune.direction or ("minimize" if metric in (VAL_LOSS, *LOWER_IS_BETTER) else "maximize")
    measures = bool(cfg.eval.general_text) and not is_encoder_run(cfg)
    if cfg.tune.max_forgetting is not None and not measures:
        raise TunesmithError("tune.max_forgetting: general-text perplexity is measured for decoder runs only")
    return Goal(metric, direction, cfg.tune.max_forgetting, measures, in_loop=metric in loop_metrics)


def _loop_metrics(cfg: Config) -> tuple[str, ...]:
    """Metrics the training loop measures on the validation split (metrics.jsonl's val_<name>)."""
    if cfg.method.name == "dpo":
        # DPO's loss depends on beta, which its search varies: only a beta-free number compares trials.
        return ("reward_accuracy",)
    if cfg.method.name == "grpo":
        # The grader's mean reward on the validation prompts (its loss is the same number negated).
        return ("reward",)
    if is_encoder_run(cfg) and cfg.method.objective == "classification":
        return ("accuracy",)
    return ()


def _encoder_metrics(cfg: Config) -> tuple[str, ...]:
    # Retrieval is scored on the whole corpus; the other objectives' metrics live in training only.
    retrieval = cfg.method.objective == "contrastive" and cfg.eval.task == "retrieval"
    return RETRIEVAL_METRICS if retrieval else ()


@dataclass
class TrialOutcome:
    value: float | None  # the goal's metric on validation; None when the trial was stopped
    val_loss: float | None  # the run's best validation loss
    general_perplexity: float | None
    forgetting: float | None  # relative rise of general-text perplexity over the base's
    steps: int
    stopped_at: int | None = None  # the evaluation step at which pruning stopped it


def trial_config(raw: dict, values: dict, out_dir: Path) -> Config:
    """The base config (a dict) with the trial's values, trained into `out_dir`, without the test split."""
    raw = apply_values(raw, values)
    raw["out_dir"] = str(out_dir)
    raw.setdefault("data", {})["test"] = None
    raw.setdefault("eval", {})["samples"] = 0  # before/after samples: time no trial needs
    raw.setdefault("train", {})["save_every"] = NO_CHECKPOINTS
    return config_from_dict(raw, f"trial {out_dir.name}")


# (step, the validation record of that step) -> whether to stop the trial now.
ShouldStop = Callable[[int, dict], bool]
Runner = Callable[[Config, ShouldStop], TrialOutcome]


class TrialRunner:
    """Trains and scores trials of one study; the validation items and the base model's general-text
    perplexity are read once per process."""

    def __init__(self, cfg: Config, goal: Goal, base_perplexity: float | None):
        from tunesmith.evaluate.run import load_test_items

        self.goal, self.base_perplexity = goal, base_perplexity
        scored = goal.metric not in (VAL_LOSS, *RETRIEVAL_METRICS) and not goal.in_loop
        # The validation file read the way `tunesmith eval` reads a test file (eval.max_items applies).
        self.items = load_test_items(_on_validation(cfg)) if scored else None

    def __call__(self, cfg: Config, should_stop: ShouldStop) -> TrialOutcome:
        from tunesmith.evaluate.run import general_perplexity, score_model
        from tunesmith.evaluate.variants import model_folder

        stopped: list[int] = []
        what = self.goal.metric if self.goal.in_loop else "loss"

        def observe(step: int, validation: dict) -> str | None:
            if not should_stop(step, validation):
                return None
            stopped.append(step)
            return f"pruned: its validation {what} trails the earlier trials' at this step"

        summary = _train_function(cfg)(cfg, overwrite=True, on_validation=observe)
        if stopped:
            return TrialOutcome(None, summary.best_val_loss, None, None, summary.steps, stopped[0])
        folder = model_folder(Path(cfg.out_dir))
        perplexity = None
        if self.items is not None:
            variant, measured = score_model(cfg, folder, self.items)
            value = variant["metrics"][self.goal.metric]["value"]
            perplexity = measured["value"] if measured else None
        else:
            if self.goal.in_loop:
                value = _kept_step_value(Path(cfg.out_dir), summary.best_step, self.goal.metric)
            elif self.goal.metric in RETRIEVAL_METRICS:
                value = _retrieval_score(cfg, self.goal.metric)
            else:
                value = summary.best_val_loss
            if self.goal.measures_forgetting:
                perplexity = general_perplexity(cfg, folder)["value"]
        gc.collect()  # the trial's models, before the next trial loads its own
        forgetting = perplexity / self.base_perplexity - 1.0 if perplexity and self.base_perplexity else None
        return TrialOutcome(value, summary.best_val_loss, perplexity, forgetting, summary.steps)


def base_perplexity(cfg: Config) -> float:
    """The base model's general-text perplexity: the reference every trial's forgetting is measured against."""
    from tunesmith.evaluate.run import general_perplexity

    return general_perplexity(cfg)["value"]


def _on_validation(cfg: Config) -> Config:
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"test": cfg.data.validation})})


def _kept_step_value(out_dir: Path, best_step: int | None, metric: str) -> float:
    """val_<metric> at the evaluation whose weights the run kept (its best validation loss), else the last."""
    name = metric_name(VAL, metric)
    measured = [row for row in read_metrics(out_dir) if name in row and row["step"] > 0]
    if not measured:
        raise TunesmithError(f"{out_dir}: the run measured no {name} on its validation split")
    kept = [row for row in measured if row["step"] == best_step]
    return float((kept or measured)[-1][name])


def _retrieval_score(cfg: Config, metric: str) -> float:
    """The trial's encoder ranking the corpus for the validation queries; the report in <trial>/validation."""
    from tunesmith.encoders.data import BEIR_SPLITS
    from tunesmith.evaluate.encoders import run_retrieval_evaluation

    on_dev = _on_validation(cfg)
    on_dev = on_dev.model_copy(update={"eval": on_dev.eval.model_copy(update={"qrels": BEIR_SPLITS["validation"]})})
    result = run_retrieval_evaluation(on_dev, cfg.out_dir, str(Path(cfg.out_dir) / "validation"))
    return result["variants"]["finetuned"]["metrics"][metric]["value"]


def _train_function(cfg: Config):
    if is_encoder_run(cfg):
        from tunesmith.encoders.recipe import train_encoder

        return train_encoder
    from tunesmith.train.recipe import train

    return train
