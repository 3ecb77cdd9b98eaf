"""The study behind `tunesmith tune`: Optuna's TPE sampler and median pruner over an SQLite file in the
output folder, so running the command again continues the same study.

Workers (one per `--jobs`, each its own process) take trials one at a time: under a lock file
they count the study's trials, stop at `--trials` or after the time budget, ask for a trial and
draw all its values, so no two workers can overshoot the count or draw while the other's trial is
half-drawn. A trial that a killed command left RUNNING is failed when the study is opened again,
and its values queued once for a retry (an interrupted trial says nothing about its values).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import multiprocessing
import os
import shutil
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.runfolder import ADAPTER, CHECKPOINTS, HEAD_FILE, MERGED
from tunesmith.tune.objective import Goal, Runner, TrialOutcome, TrialRunner, trial_config
from tunesmith.tune.report import append_result, best_number, progress_line, say, start_line, write_reports
from tunesmith.tune.space import Space, config_values, describe, suggest

STUDY_NAME = "tunesmith"
DATABASE = "study.db"
TRIALS = "trials"
TRIAL_LOG = "tune.log"
ASK_LOCK = ".ask.lock"
RETRY_OF = "retry_of"
BASELINE = "baseline"  # user attribute of the trial that trains the config as written
# What makes a study this study: a folder holding another is refused rather than mixed into.
IDENTITY = ("metric", "direction", "max_forgetting", "space")
# Entries of a trial's run folder that hold weights: dropped for every trial but the best.
WEIGHTS = (CHECKPOINTS, ADAPTER, MERGED, HEAD_FILE)


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs, picklable (workers are spawned processes)."""

    out: str
    raw: dict  # the base config, as a dict
    space: Space
    goal: Goal
    trials: int
    seed: int
    startup_trials: int
    pruning: bool
    baseline: bool  # trial 0 trains the config's own values
    deadline: float | None  # time.time() after which no trial starts
    jobs: int
    threads: int | None  # torch threads per worker (several jobs share the cores)
    base_perplexity: float | None


def trial_dir(out: Path, number: int) -> Path:
    return Path(out) / TRIALS / f"trial-{number:04d}"


def quiet_optuna() -> None:
    import optuna

    # tune says per trial what happened (report.progress_line); Optuna's own lines would repeat it.
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _storage(out: Path):
    import optuna

    # Several workers write the file: wait for a lock rather than fail at once.
    return optuna.storages.RDBStorage(
        f"sqlite:///{Path(out).absolute() / DATABASE}", engine_kwargs={"connect_args": {"timeout": 600}}
    )


def _pruner(plan: Plan):
    import optuna

    if not plan.pruning:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=plan.startup_trials, n_warmup_steps=0)


def _sampler(plan: Plan, trials_so_far: int):
    """TPE seeded by the study's seed and the number of trials before this one: reproducible, and a
    resumed study or a second worker does not draw the first trial's values again."""
    import optuna

    return optuna.samplers.TPESampler(
        seed=plan.seed * 1_000_003 + trials_so_far, n_startup_trials=plan.startup_trials, constant_liar=True
    )


def identity(plan: Plan) -> dict:
    goal = plan.goal
    return {"metric": goal.metric, "direction": goal.direction, "max_forgetting": goal.max_forgetting,
            "space": describe(plan.space)}  # fmt: skip


def open_study(plan: Plan):
    """The study in plan.out: created, or loaded when it is the same search (same metric, direction,
    budget and space); another search in the folder is an error."""
    import optuna

    out = Path(plan.out)
    out.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=_storage(out),
        direction=plan.goal.direction,
        sampler=_sampler(plan, 0),
        pruner=_pruner(plan),
        load_if_exists=True,
    )
    wanted, held = identity(plan), study.user_attrs
    if not held:
        for key, value in wanted.items():
            study.set_user_attr(key, value)
        if plan.baseline:
            _enqueue_baseline(study, plan)
        return study
    for key in IDENTITY:
        if held.get(key) != wanted[key]:
            raise TunesmithError(
                f"{out} holds a study with another {key} ({held.get(key)!r}, now {wanted[key]!r}): "
                "give another --out, or the config that study was started with"
            )
    return study


def _enqueue_baseline(study, plan: Plan) -> None:
    """The config as written becomes the first trial: the bar every drawn trial has to clear."""
    values, why_not = config_values(plan.raw, plan.space)
    if values is None:
        say(f"the config as written is not a trial: {why_not}")
        return
    study.enqueue_trial(values, user_attrs={BASELINE: True})


def load_study(plan: Plan):
    import optuna

    return optuna.load_study(
        study_name=STUDY_NAME, storage=_storage(Path(plan.out)), sampler=_sampler(plan, 0), pruner=_pruner(plan)
    )


def counted(study) -> int:
    """Trials that count towards --trials: all but those queued and not yet started."""
    from optuna.trial import TrialState

    return sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))


def requeue(study, number: int, params: dict, was_retry: bool) -> None:
    """An interrupted trial failed, and its values queued to run again (once: a retry that is
    interrupted too is only failed)."""
    from optuna.trial import TrialState

    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    if not was_retry:
        study.enqueue_trial(params, user_attrs={RETRY_OF: number}, skip_if_exists=False)


def recover(study) -> list[int]:
    """Trials a killed command left RUNNING (the caller holds the folder's lock: none is live)."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        requeue(study, trial.number, trial.params, RETRY_OF in trial.user_attrs)
    return [t.number for t in stale]


def keep_best_weights(out: Path, study) -> None:
    """Disk: only the best trial keeps its weights; every other finished trial keeps its logs and metrics."""
    from optuna.trial import TrialState

    best = best_number(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        if trial.number == best:
            continue
        folder = trial_dir(out, trial.number)
        for entry in WEIGHTS:
            target = folder / entry
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)


@contextlib.contextmanager
def ask_lock(out: Path) -> Iterator[None]:
    """One worker at a time counts, asks, draws and writes the reports."""
    fd = os.open(Path(out) / ASK_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _logged_to(path: Path) -> Iterator:
    """The trial's own output (training progress, warnings) into its log file, not between the trial lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        yield log


def _should_stop(trial, goal: Goal):
    def should_stop(step: int, validation: dict) -> bool:
        trial.report(goal.intermediate(validation), step)
        return trial.should_prune()

    return should_stop


def _tell(study, trial, outcome: TrialOutcome | None, goal: Goal, seconds: float, error: str | None):
    from optuna.trial import TrialState

    attrs = {"seconds": round(seconds, 1)}
    if outcome is not None:
        attrs |= {
            "val_loss": outcome.val_loss,
            "general_perplexity": outcome.general_perplexity,
            "forgetting": outcome.forgetting,
            "steps": outcome.steps,
            "stopped_at": outcome.stopped_at,
        }
        if outcome.stopped_at is None and (outcome.value is None or not math.isfinite(outcome.value)):
            error = f"no {goal.metric} to score the trial by (got {outcome.value})"
    if error is not None:
        attrs["error"] = error
    for key, value in attrs.items():
        if value is not None:
            trial.set_user_attr(key, value)
    if error is not None:
        return study.tell(trial, state=TrialState.FAIL)
    if outcome.stopped_at is not None:
        return study.tell(trial, state=TrialState.PRUNED)
    if goal.max_forgetting is not None and outcome.forgetting is not None:
        # Feasible when <= 0: TPE models infeasible trials apart, and best_trial never returns one.
        trial.set_constraint("forgetting", outcome.forgetting - goal.max_forgetting)
    return study.tell(trial, outcome.value)


def work(plan: Plan, runner: Runner | None = None, study=None) -> None:
    """Run trials until the study has plan.trials of them or the time budget is spent (`study`: the
    caller's handle on it, in the caller's process)."""
    quiet_optuna()
    if plan.threads:
        import torch

        torch.set_num_threads(plan.threads)
    out = Path(plan.out)
    study = study or load_study(plan)
    runner = runner or TrialRunner(config_from_dict(plan.raw), plan.goal, plan.base_perplexity)
    while True:
        with ask_lock(out):
            done = counted(study)
            if done >= plan.trials or (plan.deadline is not None and time.time() >= plan.deadline):
                return
            study.sampler = _sampler(plan, done)
            trial = study.ask()
            values = suggest(trial, plan.space)
        say(start_line(trial.number, values, trial.user_attrs.get(RETRY_OF)))
        folder, started = trial_dir(out, trial.number), time.perf_counter()
        outcome, error = None, None
        try:
            with _logged_to(folder / TRIAL_LOG) as log:
                try:
                    outcome = runner(trial_config(plan.raw, values, folder), _should_stop(trial, plan.goal))
                except Exception as failure:  # a failed trial is recorded, and the search goes on
                    traceback.print_exc(file=log)
                    error = _message(failure)
        except KeyboardInterrupt:
            with ask_lock(out):
                requeue(study, trial.number, values, RETRY_OF in trial.user_attrs)
            raise
        finished = _tell(study, trial, outcome, plan.goal, time.perf_counter() - started, error)
        with ask_lock(out):
            keep_best_weights(out, study)
            append_result(out, finished, plan.goal)
            write_reports(out, study, plan)
            say(progress_line(finished, study, plan.goal))


def _message(failure: Exception) -> str:
    return str(failure) if isinstance(failure, TunesmithError) else f"{type(failure).__name__}: {failure}"


def _child(plan: Plan) -> None:
    """A spawned worker: a usage error is one line, as on the command line, and a non-zero exit."""
    try:
        work(plan)
    except TunesmithError as error:
        print(f"tunesmith: error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def run_workers(plan: Plan, study, runner: Runner | None = None) -> None:
    """plan.jobs workers: this process (with its `study`) for one, spawned processes (fresh
    interpreters: no forked torch threads) for more."""
    if plan.jobs == 1:
        work(plan, runner, study)
        return
    if runner is not None:
        raise TunesmithError("a runner given in code runs with one job")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_child, args=(plan,), name=f"tunesmith-tune-{i}") for i in range(plan.jobs)]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join()
    except KeyboardInterrupt:
        for worker in workers:  # they had Ctrl-C too: let them give their trials back
            worker.join()
        raise
    failed = [w.exitcode for w in workers if w.exitcode != 0]
    if failed:
        raise TunesmithError(f"{len(failed)} of {plan.jobs} tune workers failed (exit codes {failed}); see above")
