"""`tunesmith tune CONFIG`: a hyperparameter search over the config's method, selected on the validation
split, within an optional forgetting budget; the chosen values written as a config to train.

The pieces: space.py (what is searched), objective.py (one trial: train, score on validation,
forgetting), study.py (Optuna's study, workers, resume), report.py (tables, plot, best.yaml).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tunesmith.config import load_config
from tunesmith.data.sources import check_data_paths
from tunesmith.errors import TunesmithError
from tunesmith.runfolder import locked
from tunesmith.tune.objective import Runner, base_perplexity, resolve_goal
from tunesmith.tune.report import BEST_CONFIG, TABLE_MD, append_result, best_number, say, write_reports
from tunesmith.tune.space import check_space, search_space
from tunesmith.tune.study import (
    Plan,
    ask_lock,
    counted,
    keep_best_weights,
    open_study,
    quiet_optuna,
    recover,
    run_workers,
)

BASE_PERPLEXITY = "base_general_perplexity"  # study attribute: measured once per study
# The data a search reads: never data.test, kept for the one evaluation of the chosen config.
SEARCH_DATA = ("train", "validation")


@dataclass
class TuneResult:
    out: Path
    trials: int
    best: int | None
    best_config: Path | None
    table: Path


def default_out(out_dir: str) -> Path:
    """Beside the run folder the config trains into: runs/chat -> runs/chat-tune."""
    return Path(out_dir.rstrip("/") + "-tune")


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def tune(
    config: str | Path,
    overrides: list[str] | None = None,
    trials: int | None = None,
    time_budget_min: float | None = None,
    jobs: int = 1,
    out: str | Path | None = None,
    runner: Runner | None = None,
) -> TuneResult:
    """Run (or continue) the study in `out` until it has `trials` trials (default tune.trials) or the
    time budget stops new ones; `runner` replaces the real trial (train and score) in one job."""
    cfg = load_config(config, overrides)
    if trials is not None and trials < 1:
        raise TunesmithError(f"--trials {trials} must be at least 1")
    if jobs < 1:
        raise TunesmithError(f"--jobs {jobs} must be at least 1")
    if time_budget_min is not None and time_budget_min <= 0:
        raise TunesmithError(f"--time-budget {time_budget_min:g} must be a positive number of minutes")
    goal, space = resolve_goal(cfg), search_space(cfg)
    raw = cfg.model_dump(mode="json")
    check_space(raw, space)
    check_data_paths(cfg.data, SEARCH_DATA)
    out = Path(out) if out else default_out(cfg.out_dir)
    wanted = trials or cfg.tune.trials
    quiet_optuna()
    with locked(out):  # one command per study: a RUNNING trial found now was left by a stopped one
        plan = Plan(
            out=str(out),
            raw=raw,
            space=space,
            goal=goal,
            trials=wanted,
            seed=cfg.tune.seed,
            startup_trials=cfg.tune.startup_trials,
            pruning=cfg.tune.pruning,
            baseline=cfg.tune.baseline,
            deadline=time.time() + 60 * time_budget_min if time_budget_min else None,
            jobs=jobs,
            threads=max(1, cores() // jobs) if jobs > 1 else None,
            base_perplexity=None,
        )
        study = open_study(plan)
        stale = recover(study)
        if stale:
            numbers = ", ".join(map(str, stale))
            say(f"trials {numbers} were left running by a stopped command: failed, their values queued again")
            for trial in study.get_trials(deepcopy=False):
                if trial.number in stale:
                    append_result(out, trial, goal)
        done = counted(study)
        base = study.user_attrs.get(BASE_PERPLEXITY)
        if goal.measures_forgetting and base is None and done < wanted:
            say(f"measuring the base model's general-text perplexity on {cfg.eval.general_text}")
            base = base_perplexity(cfg)
            study.set_user_attr(BASE_PERPLEXITY, base)
        plan = replace(plan, base_perplexity=base)
        say(
            f"study {out}: {done} trials so far, up to {wanted}; scored on validation {goal.metric} ({goal.direction})"
            + (f", forgetting budget {goal.max_forgetting:.1%}" if goal.max_forgetting is not None else "")
            + (f"; {jobs} jobs of {plan.threads} threads" if jobs > 1 else "")
        )
        run_workers(plan, study, runner)
        with ask_lock(out):
            keep_best_weights(out, study)
            write_reports(out, study, plan)
        best = best_number(study)
    return TuneResult(
        out=out,
        trials=counted(study),
        best=best,
        best_config=out / BEST_CONFIG if best is not None else None,
        table=out / TABLE_MD,
    )
